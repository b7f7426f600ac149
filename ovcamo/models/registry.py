"""Registers the toolkit's open_clip architectures so ``open_clip.create_model`` resolves them by
name, and the one timm trunk they use that timm does not ship."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import timm
from timm.models import register_model

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
#: The micro CLIP of the micro-world: ConvNeXt-atto trunk, 3-layer text transformer. The other
#: micro CLIPs of ``model_configs/`` are the backbone ablation's: ``ovcamo_micro_convnext_b``
#: (a narrower ConvNeXt, as ConvNeXt-B is to ConvNeXt-L) and ``ovcamo_micro_vit`` (a ViT).
MICRO_CLIP_NAME = "ovcamo_micro_convnext"


@register_model
def ovcamo_convnext_atto_b(pretrained: bool = False, **kwargs: Any) -> Any:
    """ConvNeXt-atto's depths at about ⅔ of its widths (27…216 channels), the ratio of
    ConvNeXt-B's widths to ConvNeXt-L's. No pretrained weights exist."""
    if pretrained:
        raise ValueError("ovcamo_convnext_atto_b has no pretrained weights")
    return timm.create_model("convnext_atto", dims=(27, 54, 108, 216), **kwargs)


def register_model_configs() -> None:
    """Add ``model_configs/*.json`` to open_clip's registry (idempotent)."""
    if MICRO_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
