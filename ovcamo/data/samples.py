"""Reading one sample and splitting off the held-out base-validation part (no torch needed, so
scoring and reporting can use them without the dataset classes)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovcamo.data.io import read_image, read_mask
from ovcamo.data.ovcamo_format import Record


class UnreadableSampleError(OSError):
    """A sample's image or mask cannot be decoded; the message names the sample and the file."""


def _decode(
    read: Callable[[Path], np.ndarray], path: Path, record: Record, what: str
) -> np.ndarray:
    try:
        return read(path)
    except (OSError, ValueError, SyntaxError) as e:
        raise UnreadableSampleError(
            f"{what} of {record.unique_id!r} cannot be decoded: {path} ({e})"
        ) from e


def load_sample(record: Record) -> dict[str, Any]:
    """Read one sample: RGB uint8 image resized to its mask (official behaviour), bool mask.

    A file that cannot be decoded (a corrupt body behind intact ends passes the load-time check)
    raises :class:`UnreadableSampleError` naming the sample and the file.
    """
    image = _decode(read_image, record.image_path, record, "image")
    mask = _decode(read_mask, record.mask_path, record, "mask")
    if image.shape[:2] != mask.shape:
        h, w = mask.shape
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return {
        "image": image,
        "mask": mask,
        "class_name": record.class_name,
        "unique_id": record.unique_id,
    }


def holdout_split(
    records: Sequence[Record], fraction: float, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Split records into (kept, held-out) per class, deterministically.

    Within each class, samples are ordered by a seeded hash of their ``unique_id`` and the first
    ``round(fraction · n)`` (at least one and at most ``n − 1`` when ``fraction > 0``; none for a class
    with a single sample) are held out.
    The split does not depend on the order of ``sample_info.json``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    by_class: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_class[r.class_name].append(r)
    held: set[str] = set()
    for name, rs in by_class.items():
        # A class with a single sample stays in training: holding it out would remove the class.
        n_hold = 0
        if fraction > 0 and len(rs) >= 2:
            n_hold = max(1, min(round(fraction * len(rs)), len(rs) - 1))
        ordered = sorted(
            rs, key=lambda r: hashlib.sha256(f"{seed}:{name}:{r.unique_id}".encode()).hexdigest()
        )
        held.update(r.unique_id for r in ordered[:n_hold])
    kept = [r for r in records if r.unique_id not in held]
    out = [r for r in records if r.unique_id in held]
    return kept, out
