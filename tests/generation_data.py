"""Small OVCamo-format folders for the generation tests, written in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ovcamo.data.io import write_png
from ovcamo.data.ovcamo_format import STANDARD_LAYOUT

CLASSES = [
    ("snow leopard", "train"),
    ("owl", "train"),
    ("mantis", "train"),
    ("reccoon", "train"),
    ("frog", "test"),
    ("crab", "test"),
]
COUNTS = {"snow leopard": 6, "owl": 4, "mantis": 2, "reccoon": 1, "frog": 2, "crab": 1}


def textured(rng: np.random.Generator, h: int, w: int, colour: np.ndarray) -> np.ndarray:
    base = colour + rng.normal(0, 18, (h, w, 3))
    stripes = 25 * np.sin(np.arange(w)[None, :, None] / 3.0)
    return np.clip(base + stripes, 0, 255).astype(np.uint8)


def ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def write_dataset(root: Path, size: int = 64, seed: int = 0, edge_cases: bool = False) -> Path:
    """Write an OVCamo-format folder and its ``paths.json``; returns the ``paths.json`` path.

    With ``edge_cases`` the ``owl`` class gets an empty mask, a mask covering the whole image, an
    object touching the border, a tiny object and an image whose size differs from its mask.
    """
    rng = np.random.default_rng(seed)
    classes, samples = [], []
    n = 0
    for cid, (name, split) in enumerate(CLASSES):
        classes.append(
            {
                "name": name,
                "id": cid,
                "super_class": "animal",
                "sub_class": [name],
                "split": split,
                "num_samples": COUNTS[name],
            }
        )
        colour = rng.uniform(40, 220, 3)
        for _ in range(COUNTS[name]):
            uid = f"{n:06d}_{name}"
            img = textured(rng, size, size, colour)
            cy, cx = rng.uniform(0.35, 0.65, 2) * size
            mask = ellipse(size, size, cy, cx, size * 0.22, size * 0.3)
            obj = textured(rng, size, size, colour * 0.8 + 20)
            img[mask] = obj[mask]
            write_png(root / split / "image" / f"{uid}.png", img)
            write_png(root / split / "mask" / f"{uid}.png", mask.astype(np.uint8) * 255)
            samples.append(
                {
                    "unique_id": uid,
                    "base_class": name,
                    "image": f"x{n}.png",
                    "mask": f"x{n}.png",
                    "id": n,
                }
            )
            n += 1
    if edge_cases:
        cases = {
            "empty": np.zeros((size, size), bool),
            "full": np.ones((size, size), bool),
            "border": ellipse(size, size, 0, size / 2, size * 0.3, size * 0.3),
            "tiny": ellipse(size, size, size / 2, size / 2, 2, 2),
            "mismatch": ellipse(size, size, size / 2, size / 2, size * 0.25, size * 0.25),
        }
        for case, mask in cases.items():
            uid = f"{n:06d}_owl"
            img_size = size + 6 if case == "mismatch" else size
            img = textured(rng, img_size, img_size, np.array([90.0, 120.0, 60.0]))
            write_png(root / "train" / "image" / f"{uid}.png", img)
            write_png(root / "train" / "mask" / f"{uid}.png", mask.astype(np.uint8) * 255)
            samples.append(
                {
                    "unique_id": uid,
                    "base_class": "owl",
                    "image": f"{case}.png",
                    "mask": f"{case}.png",
                    "id": n,
                }
            )
            n += 1
    (root / "class_info.json").write_text(json.dumps(classes, indent=1))
    (root / "sample_info.json").write_text(json.dumps(samples, indent=1))
    (root / "paths.json").write_text(json.dumps(STANDARD_LAYOUT))
    return root / "paths.json"


def data_node(root: Path) -> dict:
    """A ``data`` config node naming the folder ``write_dataset`` wrote."""
    return {
        "class_info": str(root / "class_info.json"),
        "sample_info": str(root / "sample_info.json"),
        "train_image_dir": str(root / "train/image"),
        "train_mask_dir": str(root / "train/mask"),
        "test_image_dir": str(root / "test/image"),
        "test_mask_dir": str(root / "test/mask"),
        "holdout_fraction": 0.0,
        "holdout_seed": 0,
    }
