"""Models by name, as open_clip's ``create_model``: every ``ovcamo/conf/model/*.yaml`` is a name
(:func:`list_models`), and keyword options replace its values, no Hydra override strings.

>>> from ovcamo.models import create_model, list_models
>>> list_models()  # ['baclip', 'baclip_micro', 'ladder_conv', ...]
>>> model = create_model("baclip_micro", clip_checkpoint=None, num_mfmsa=2)  # eval mode
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from ovcamo import CONF_DIR

if TYPE_CHECKING:
    from ovcamo.models.baclip import BaCLIP

#: The backbone a model name gets when none is given: micro widths ↔ the micro CLIP.
MICRO_BACKBONE = "micro"
PAPER_BACKBONE = "convnext_large_d_320"


class _Unset:
    def __repr__(self) -> str:
        return "<config value>"


#: "Keep the config's value" (``None`` means "no weights" for the checkpoint options).
UNSET: Any = _Unset()


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def list_models() -> list[str]:
    """The model names :func:`create_model` builds: the files of ``ovcamo/conf/model/``."""
    return _names("model")


def list_backbones() -> list[str]:
    """The CLIP backbones a model can be built on: the files of ``ovcamo/conf/backbone/``."""
    return _names("backbone")


def _check_name(value: str, known: list[str], what: str) -> None:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(known)}")


def create_model(
    name: str = "baclip_micro",
    *,
    backbone: str | None = None,
    clip_checkpoint: str | os.PathLike | None = UNSET,
    image_size: int | None = None,
    num_mfmsa: int | None = None,
    sam_checkpoint: str | os.PathLike | None = UNSET,
    device: str | torch.device = "cpu",
    **options: Any,
) -> BaCLIP:
    """Build the BaCLIP variant ``name`` (see :func:`list_models`), in eval mode on ``device``.

    Args:
        name: a model config, e.g. ``baclip_micro``, ``baclip``, ``ladder_conv_micro``.
        backbone: a backbone config (:func:`list_backbones`); default ``micro`` for ``*_micro``
            names, else ConvNeXt-L (d_320), the paper's.
        clip_checkpoint: the CLIP weights: an open_clip tag or a checkpoint file (e.g. what
            ``ovcamo-micro-clip`` writes); ``None``: random weights. Default: the backbone
            config's (the micro backbone names none, so micro models need this).
        image_size: the input size (``backbone.image_size``).
        num_mfmsa: MFMSA blocks in the CCE (``cce.num_blocks``, 0..5).
        sam_checkpoint: an official SAM file initialising the decoder; ``None``: random.
        options: other top-level keys of the model config, merged into it: ``dim=32``,
            ``mrem={"mode": "off"}``, ``decoder={"high_res": False}``.
    Returns:
        The model, randomly initialised except for the CLIP and SAM weights named.
    """
    from ovcamo.engine.resolve import MICRO
    from ovcamo.models.build import build_model, model_config

    _check_name(name, list_models(), "model")
    backbone = backbone or (MICRO_BACKBONE if name.endswith("_micro") else PAPER_BACKBONE)
    _check_name(backbone, list_backbones(), "backbone")
    node = model_config(name, backbone)
    unknown = sorted(set(options) - set(node))
    if unknown:
        raise ValueError(
            f"create_model({name!r}): unknown option(s) {', '.join(unknown)}; the model config "
            f"has {', '.join(sorted(node))} (ovcamo/conf/model/{name}.yaml)"
        )
    changes: dict[str, Any] = dict(options)
    backbone_changes = dict(changes.pop("backbone", None) or {})
    if clip_checkpoint is not UNSET:
        backbone_changes["pretrained"] = None if clip_checkpoint is None else str(clip_checkpoint)
    if image_size is not None:
        backbone_changes["image_size"] = int(image_size)
    if backbone_changes:
        changes["backbone"] = backbone_changes
    if num_mfmsa is not None:
        changes["cce"] = {**dict(changes.get("cce") or {}), "num_blocks": int(num_mfmsa)}
    if sam_checkpoint is not UNSET:
        changes["sam_checkpoint"] = None if sam_checkpoint is None else str(sam_checkpoint)
    cfg = OmegaConf.merge(node, changes)
    if cfg.backbone.get("pretrained") == MICRO:
        raise ValueError(
            f"create_model({name!r}): backbone {backbone!r} takes the micro CLIP that "
            "ovcamo-micro-clip trains for a micro-world; pass clip_checkpoint=<its checkpoint "
            "file>, or clip_checkpoint=None for random CLIP weights"
        )
    return build_model(cfg).to(device).eval()
