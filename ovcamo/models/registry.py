"""Registers the toolkit's open_clip architectures so ``open_clip.create_model`` resolves them by name."""

from __future__ import annotations

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
#: The micro CLIP of the micro-world (DESIGN §6): ConvNeXt-atto trunk, 3-layer text transformer.
MICRO_CLIP_NAME = "ovcamo_micro_convnext"


def register_model_configs() -> None:
    """Add ``model_configs/*.json`` to open_clip's registry (idempotent)."""
    if MICRO_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
