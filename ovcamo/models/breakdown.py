"""Parameter counts of a built BaCLIP per block, for ``check=true`` and docs/baclip.md."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

#: Printed names of BaCLIP's top-level blocks; an absent block (``None``) is not listed.
BLOCK_LABELS = {
    "backbone": "CLIP (frozen)",
    "pyramid": "simple feature pyramid (ViT, conv decoder)",
    "conv_decoder": "conv decoder",
    "neck": "FPN neck (addition)",
    "high_res": "high-resolution skips (addition)",
    "mrem": "MREM",
    "cce": "CCE",
    "image_proj": "projection before the decoder (addition)",
    "prompt_adapter": "prompt self-attention + Proj",
    "prompt_encoder": "SAM prompt encoder (frozen)",
    "mask_decoder": "SAM mask decoder",
}


def parameter_breakdown(model: nn.Module) -> list[tuple[str, int, int]]:
    """``(block, trainable, frozen)`` parameter counts for each top-level child of ``model`` that
    holds parameters, in construction order. A parameter-free block (the paper's
    :class:`~ovcamo.models.neck.TrunkLevel`, an ``nn.Identity`` projection) is left out."""
    rows = []
    for name, child in model.named_children():
        params = list(child.parameters())
        if not params:
            continue
        trainable = sum(p.numel() for p in params if p.requires_grad)
        rows.append((name, trainable, sum(p.numel() for p in params) - trainable))
    return rows


def format_parameter_breakdown(model: nn.Module) -> list[str]:
    """One line per block, ``trainable`` (and ``frozen`` where any), then the total trainable."""
    rows = parameter_breakdown(model)
    lines = []
    for name, trainable, frozen in rows:
        label = BLOCK_LABELS.get(name, name)
        frozen_note = f", {frozen:,} frozen" if frozen else ""
        lines.append(f"{label} (`{name}`): {trainable:,} trainable{frozen_note}")
    lines.append(f"total: {sum(r[1] for r in rows):,} trainable parameters")
    return lines


def model_breakdown_lines(model_cfg: Mapping[str, Any]) -> list[str]:
    """The ``model`` config built on CPU with random weights (no CLIP or SAM file is read: the
    counts do not depend on them) → the lines ``check=true`` prints."""
    from omegaconf import DictConfig, OmegaConf

    from ovcamo.models.build import build_model

    config = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    config = {
        **config,
        "backbone": {**config["backbone"], "pretrained": None},
        "sam_checkpoint": None,
    }
    logging.getLogger().disabled, was = True, logging.getLogger().disabled
    try:
        # open_clip warns at root level that the weights are random, which is the intent here.
        model = build_model(config)
    finally:
        logging.getLogger().disabled = was
    return [
        "trainable parameters per block (counted on the model built with random weights):",
        *(f"  {line}" for line in format_parameter_breakdown(model)),
    ]
