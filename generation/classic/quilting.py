"""Texture synthesis from the masked pixels of an exemplar (a real background, or the object):
image quilting (Efros & Freeman, SIGGRAPH 2001) with patches sampled inside the mask, minimum-error
boundary cuts, feathered seams and a Lab colour match (Reinhard et al., 2001). The background
LAKE-RED learns to retrieve, made without weights."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def valid_patch_corners(mask: np.ndarray, patch: int, min_coverage: float) -> np.ndarray:
    """Top-left corners ``(N, 2)`` of ``patch×patch`` windows whose mask coverage is ≥ ``min_coverage``."""
    h, w = mask.shape
    if h < patch or w < patch:
        return np.zeros((0, 2), np.int64)
    integral = cv2.integral(mask.astype(np.uint8))
    area = (
        integral[patch:, patch:]
        - integral[:-patch, patch:]
        - integral[patch:, :-patch]
        + integral[:-patch, :-patch]
    )
    return np.argwhere(area >= min_coverage * patch * patch)


def _min_cut(error: np.ndarray) -> np.ndarray:
    """Minimum-error vertical path through ``error`` (``P×O``); returns, per row, the cut column.

    Plain Python lists: the overlap is a handful of columns wide, where per-call numpy overhead
    would dominate.
    """
    rows = error.tolist()
    cols = len(rows[0])
    cost = [rows[0]]
    for i in range(1, len(rows)):
        prev, row = cost[-1], rows[i]
        cost.append([row[j] + min(prev[max(0, j - 1) : j + 2]) for j in range(cols)])
    path = [0] * len(rows)
    last = cost[-1]
    j = last.index(min(last))
    path[-1] = j
    for i in range(len(rows) - 2, -1, -1):
        lo = max(0, j - 1)
        window = cost[i][lo : j + 2]
        j = lo + window.index(min(window))
        path[i] = j
    return np.asarray(path)


def quilt_texture(
    exemplar: np.ndarray,
    exemplar_mask: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    patch: int = 24,
    overlap: int | None = None,
    candidates: int = 24,
    tolerance: float = 0.1,
    min_coverage: float = 0.95,
    min_patch: int = 6,
) -> tuple[np.ndarray, int]:
    """Synthesise an ``height×width×3`` uint8 texture from the masked pixels of ``exemplar``.

    Patches are drawn only where ``exemplar_mask`` covers at least ``min_coverage`` of the window,
    and the few pixels outside the mask such windows hold are inpainted from the masked ones
    first, so no unmasked pixel leaks in. The patch size shrinks (down to ``min_patch``) for
    small masked regions. Returns ``(texture, patch size used)``; raises ``ValueError``
    when the object is too small for any patch.
    """
    corners = valid_patch_corners(exemplar_mask, patch, min_coverage)
    while corners.shape[0] == 0 and patch > min_patch:
        patch = max(min_patch, patch * 2 // 3)
        corners = valid_patch_corners(exemplar_mask, patch, min_coverage)
    if corners.shape[0] == 0:
        raise ValueError(f"no {min_patch}×{min_patch} window lies inside the exemplar's mask")
    if not exemplar_mask.all():
        # Windows may hold up to (1 − min_coverage) of unmasked pixels; fill those from the
        # masked ones first, so none of them reaches the new texture.
        exemplar = cv2.inpaint(
            np.ascontiguousarray(exemplar), (~exemplar_mask).astype(np.uint8), 3, cv2.INPAINT_TELEA
        )
    overlap = max(2, patch // 4) if overlap is None else overlap
    step = patch - overlap
    ny = max(1, int(np.ceil((height - overlap) / step)))
    nx = max(1, int(np.ceil((width - overlap) / step)))
    canvas = np.zeros((ny * step + overlap, nx * step + overlap, 3), np.float32)
    windows = sliding_window_view(exemplar.astype(np.float32), (patch, patch), axis=(0, 1))
    ramp = np.ones((patch, patch), np.float32)
    for by in range(ny):
        for bx in range(nx):
            y, x = by * step, bx * step
            pick = corners[rng.integers(0, corners.shape[0], size=candidates)]
            cand = windows[pick[:, 0], pick[:, 1]].transpose(0, 2, 3, 1)  # (N, P, P, 3)
            target = canvas[y : y + patch, x : x + patch]
            err = np.zeros(candidates, np.float32)
            if bx > 0:
                err += ((cand[:, :, :overlap] - target[None, :, :overlap]) ** 2).sum((1, 2, 3))
            if by > 0:
                err += ((cand[:, :overlap] - target[None, :overlap]) ** 2).sum((1, 2, 3))
            good = np.flatnonzero(err <= err.min() * (1.0 + tolerance) + 1e-6)
            chosen = cand[good[rng.integers(0, good.size)]]
            keep_new = ramp.copy()
            if bx > 0:
                e = ((chosen[:, :overlap] - target[:, :overlap]) ** 2).sum(2)
                cut = _min_cut(e)
                keep_new[:, :overlap] *= np.arange(overlap)[None, :] >= cut[:, None]
            if by > 0:
                e = ((chosen[:overlap] - target[:overlap]) ** 2).sum(2).T
                cut = _min_cut(e)
                keep_new[:overlap, :] *= (np.arange(overlap)[None, :] >= cut[:, None]).T
            if bx > 0 or by > 0:
                # Feather the cut so the seam does not show as a one-pixel step.
                keep_new = cv2.blur(keep_new, (3, 3))
                keep_new[overlap:, overlap:] = 1.0
                if by == 0:
                    keep_new[:, overlap:] = 1.0
                if bx == 0:
                    keep_new[overlap:, :] = 1.0
            a = keep_new[..., None]
            canvas[y : y + patch, x : x + patch] = a * chosen + (1.0 - a) * target
    texture = np.clip(np.rint(canvas[:height, :width]), 0, 255).astype(np.uint8)
    return texture, patch


def match_colour_statistics(
    image: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray
) -> np.ndarray:
    """Shift ``image`` (uint8 ``H×W×3``) to the Lab mean and standard deviation of the masked pixels
    of ``reference``; quilting drifts a little from the exemplar's statistics, this pulls it back."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float32)[reference_mask]
    mu, sd = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-3
    rmu, rsd = ref.mean(0), ref.std(0)
    out = (lab - mu) / sd * rsd + rmu
    return cv2.cvtColor(np.clip(np.rint(out), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
