"""Tiny OVCamo-format folders for the engine's tests (written in milliseconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovcamo.data import ClassInfo, SampleInfo, write_class_info, write_sample_info
from ovcamo.data.io import atomic_write_json, write_png
from ovcamo.data.ovcamo_format import STANDARD_LAYOUT

TRAIN_CLASSES = ("snow leopard", "reccoon", "owl")
TEST_CLASSES = ("frog", "crab")


def write_tiny_dataset(
    root: Path,
    counts: dict[str, int] | None = None,
    *,
    size: int = 24,
    seed: int = 0,
    classes_from: tuple[tuple[str, ...], tuple[str, ...]] = (TRAIN_CLASSES, TEST_CLASSES),
    synthetic: bool = False,
) -> Path:
    """Write an OVCamo-format folder with ``paths.json``; each sample a noisy square object.

    ``counts``: samples per class (default 6 per train class, 3 per test class). With
    ``synthetic`` every sample is stored in the train folders and carries provenance fields.
    """
    train, test = classes_from
    counts = counts or {**{c: 6 for c in train}, **{c: 3 for c in test}}
    classes = [
        ClassInfo(n, i, "animal", (), "train" if n in train else "test", counts.get(n, 0))
        for i, n in enumerate((*train, *test))
    ]
    rng = np.random.default_rng(seed)
    samples, k = [], 0
    for c in classes:
        for _ in range(counts.get(c.name, 0)):
            uid = f"{k:06d}_{c.name}"
            split = "train" if synthetic or c.split == "train" else "test"
            img = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            mask = np.zeros((size, size + 4), dtype=np.uint8)
            y, x = rng.integers(2, size // 2, 2)
            mask[y : y + size // 3, x : x + size // 3] = 255
            img[mask > 0] = (np.array([40 * (c.id + 1) % 256, 90, 200]) + 0).astype(np.uint8)
            write_png(root / split / "image" / f"{uid}.png", img)
            write_png(root / split / "mask" / f"{uid}.png", mask)
            extra = {"synthetic": True, "generator": "test"} if synthetic else {}
            samples.append(SampleInfo(uid, c.name, f"{uid}.png", f"{uid}.png", k, extra))
            k += 1
    for split in ("train", "test"):
        (root / split / "image").mkdir(parents=True, exist_ok=True)
        (root / split / "mask").mkdir(parents=True, exist_ok=True)
    write_class_info(root / "class_info.json", classes)
    write_sample_info(root / "sample_info.json", samples)
    atomic_write_json(root / "paths.json", STANDARD_LAYOUT)
    return root


def write_tiny_checkpoint(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """A randomly initialised micro BaCLIP (micro CLIP, ``backbone.pretrained=null``) saved as
    ``ovcamo-train`` saves a checkpoint: ``save_model`` plus a ``state.pt`` with the seed the frozen
    backbone is rebuilt from. Returns ``directory``."""
    import torch

    from ovcamo.checkpoint import STATE_FILE, save_state
    from ovcamo.models import build_model, model_config, save_model

    torch.manual_seed(seed)
    cfg = model_config(
        "baclip_micro",
        overrides=["backbone.pretrained=null", f"backbone.image_size={image_size}"],
    )
    save_model(build_model(cfg).eval(), directory)
    save_state(directory / STATE_FILE, {"seed": seed})
    return directory
