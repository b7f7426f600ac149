"""A non-learned reference segmenter: colour contrast against the image border.

A camouflaged world is only camouflaged if such a rule does poorly on it. Every loop report scores
it beside the trained segmenter with the class-agnostic metrics (it predicts no class), so a
reader sees how much of the segmenter's score a trick that ignores shape would get.

The rule: smooth the image (Gaussian, ``sigma`` pixels), fit a Gaussian to the colours of a
``border``-pixel frame around the image (the background, as objects rarely touch the frame), and
take each pixel's Mahalanobis distance to it, min-max scaled to ``0..255``. Numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

NAME = "colour contrast to the border"


def contrast_map(image: np.ndarray, sigma: float = 2.0, border: int = 4) -> np.ndarray:
    """``H×W×3`` uint8 image → ``H×W`` uint8 map, high where the colour is unlike the border's."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {image.shape}")
    x = gaussian_filter(image.astype(np.float64) / 255.0, sigma=(sigma, sigma, 0))
    frame = np.ones(x.shape[:2], bool)
    frame[border:-border, border:-border] = False
    ring = x[frame]
    mean = ring.mean(axis=0)
    cov = np.cov(ring, rowvar=False) + 1e-4 * np.eye(3)
    d = x - mean
    dist = np.sqrt(np.einsum("hwi,ij,hwj->hw", d, np.linalg.inv(cov), d))
    lo, hi = dist.min(), dist.max()
    scaled = (dist - lo) / (hi - lo) if hi > lo else np.zeros_like(dist)
    return np.round(scaled * 255.0).astype(np.uint8)


def score_baseline(pairs: Iterable[tuple[Path, Path]]) -> dict[str, float]:
    """Class-agnostic metrics of :func:`contrast_map` over ``(image, mask)`` file pairs: the
    ``agnostic_*`` entries of :func:`ovcamo.metrics.summary.summarize`, and ``samples``."""
    from ovcamo.data.io import read_image, read_mask
    from ovcamo.metrics.functional import sample_scores
    from ovcamo.metrics.summary import summarize

    rows = [
        sample_scores(contrast_map(read_image(image)), read_mask(mask)).to_vector()
        for image, mask in pairs
    ]
    if not rows:
        raise ValueError("no samples to score the baseline on")
    summary = summarize(np.stack(rows))
    out = {k: v for k, v in summary.items() if k.startswith("agnostic_")}
    out["samples"] = len(rows)
    return out
