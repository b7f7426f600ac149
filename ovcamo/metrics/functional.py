"""Per-sample SOD measures of the OVCOS protocol (docs/evaluation.md), vectorised over the uint8
histogram.

One call scores one prediction/GT pair: S-measure (Fan et al., ICCV 2017, α = 0.5), weighted
F-measure (Margolin et al., CVPR 2014, β² = 1, 7×7 Gaussian σ = 5), MAE, F-measure (β² = 0.3),
E-measure (Fan et al., IJCAI 2018) and IoU, each with the adaptive threshold ``min(2·mean(p), 1)``
and, for Fβ, Em and IoU, the 256-threshold curve.

The numbers follow ``pysodmetrics`` (the reference the OVCamo evaluator builds on) to floating-point
rounding, including its normalisation (``p / 255`` then per-image min-max) and its binning of the
normalised map back to 256 levels. Everything that only depends on a pixel's value and on whether it
is foreground is computed from two 256-bin histograms per image quadrant, so no measure loops over
thresholds or re-reads the image per threshold. One documented difference: when the GT centroid falls
in the last row or column, ``pysodmetrics`` scores an empty S-measure quadrant as NaN, which makes the
whole S-measure NaN; here an empty quadrant has area weight 0 and contributes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

#: MATLAB's ``eps``, the constant every reference implementation adds to denominators.
EPS = float(np.spacing(1))
#: Number of thresholds of the Fβ, Em and IoU curves (pysodmetrics order: threshold 255 first, 0 last).
NUM_THRESHOLDS = 256
#: The scalar measures of one sample, in storage order.
SCALAR_KEYS = ("sm", "wfm", "mae", "adpfm", "adpem", "adpiou")
#: The curve measures of one sample, in storage order after the scalars.
CURVE_KEYS = ("fm", "em", "iou")
#: Length of one sample's score vector: six scalars, then three 256-long curves.
SCORE_LENGTH = len(SCALAR_KEYS) + len(CURVE_KEYS) * NUM_THRESHOLDS

_LEVELS = np.arange(256, dtype=np.float64) / 255
_FM_BETA2 = 0.3
_SM_ALPHA = 0.5
_WFM_BETA2 = 1.0


def _gaussian_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', [size size], sigma)``, which is separable."""
    r = (size - 1) / 2
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma * sigma))
    return g / g.sum()


_WFM_KERNEL = _gaussian_1d()
_WFM_RADIUS = (len(_WFM_KERNEL) - 1) // 2
_DILATE = np.ones((2 * _WFM_RADIUS + 1, 2 * _WFM_RADIUS + 1), np.uint8)


@dataclass(frozen=True)
class SampleScores:
    """Measures of one prediction/GT pair, before any class-aware zeroing.

    Curves have ``NUM_THRESHOLDS`` entries, index ``i`` for threshold ``255 − i`` (pysodmetrics order).
    """

    sm: float
    wfm: float
    mae: float
    adpfm: float
    adpem: float
    adpiou: float
    fm: np.ndarray
    em: np.ndarray
    iou: np.ndarray

    def to_vector(self) -> np.ndarray:
        """float64 ``(SCORE_LENGTH,)``: the scalars in ``SCALAR_KEYS`` order, then the curves."""
        return np.concatenate(
            [
                np.array([getattr(self, k) for k in SCALAR_KEYS], np.float64),
                self.fm,
                self.em,
                self.iou,
            ]
        )


def normalisation_lut(hist: np.ndarray) -> np.ndarray:
    """Normalised value of each uint8 level, bit-identical to pysodmetrics' ``prepare_data``.

    ``hist``: ``(256,)`` counts of the prediction's levels. The reference divides by 255 and, unless
    the map is constant, min-max normalises; applying the same float operations to the 256 levels
    gives the same numbers as applying them to every pixel. Levels absent from the image map to 0.
    """
    present = np.flatnonzero(hist)
    lo, hi = present[0], present[-1]
    lut = _LEVELS.copy()
    if hi != lo:
        lut = (lut - _LEVELS[lo]) / (_LEVELS[hi] - _LEVELS[lo])
    lut[hist == 0] = 0.0
    return lut


def _s_object(hist: np.ndarray, values: np.ndarray) -> float:
    """Object similarity of one region from its value histogram (S-measure, §3.2 of Fan et al.)."""
    n = hist.sum()
    mean = float(hist @ values) / n
    std = np.sqrt(float(hist @ (values - mean) ** 2) / (n - 1)) if n > 1 else 0.0
    return 2 * mean / (mean * mean + 1 + std + EPS)


def _ssim_dense(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region SSIM computed pixel-wise, used where the histogram form would change a tie.

    A quadrant whose prediction is a single value makes the reference's ``alpha == 0 and beta == 0``
    test depend on the rounding of ``np.mean`` over that exact slice, so it is evaluated the same way.
    """
    n = pred.size
    x = np.mean(pred)
    y = np.mean(gt)
    sigma_x = np.sum((pred - x) ** 2) / (n - 1 + EPS)
    sigma_y = np.sum((gt - y) ** 2) / (n - 1 + EPS)
    sigma_xy = np.sum((pred - x) * (gt - y)) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    return 1.0 if beta == 0 else 0.0


def _ssim_hist(h_fg: np.ndarray, h_bg: np.ndarray, lut: np.ndarray) -> float:
    """Region SSIM of one quadrant from its foreground/background value histograms."""
    n_fg, n_bg = float(h_fg.sum()), float(h_bg.sum())
    n = n_fg + n_bg
    h_all = h_fg + h_bg
    x = float(h_all @ lut) / n
    y = n_fg / n
    d = lut - x
    sigma_x = float(h_all @ (d * d)) / (n - 1 + EPS)
    sigma_y = (n_fg * (1 - y) ** 2 + n_bg * y * y) / (n - 1 + EPS)
    sigma_xy = (float(h_fg @ d) * (1 - y) - float(h_bg @ d) * y) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def s_measure(
    pred: np.ndarray,
    gt: np.ndarray,
    quad_hists: np.ndarray,
    lut: np.ndarray,
    split: tuple[int, int],
) -> float:
    """S-measure (α = 0.5) of a pair whose GT has both foreground and background.

    ``pred``: uint8 ``H×W`` prediction; ``gt``: bool ``H×W``; ``lut``: its normalised levels
    (:func:`normalisation_lut`); ``quad_hists``:
    ``(4, 2, 256)`` level histograms per quadrant (lt, rt, lb, rb) and GT side (bg, fg);
    ``split``: the quadrant corner ``(cy, cx)`` (reference convention: rounded centroid + 1).
    """
    h, w = gt.shape
    hist = quad_hists.sum(axis=0)
    y = float(hist[1].sum()) / (h * w)
    obj = _s_object(hist[1], lut) * y + _s_object(hist[0], 1 - lut) * (1 - y)

    cy, cx = split
    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    slices = (
        (slice(0, cy), slice(0, cx)),
        (slice(0, cy), slice(cx, w)),
        (slice(cy, h), slice(0, cx)),
        (slice(cy, h), slice(cx, w)),
    )
    region = 0.0
    pred_f = None
    for q, weight in enumerate((w_lt, w_rt, w_lb, w_rb)):
        h_bg, h_fg = quad_hists[q]
        h_all = h_bg + h_fg
        if not h_all.any():
            continue
        if np.count_nonzero(h_all) == 1:
            # Slices of the full float map, so np.mean sums in the reference's order.
            pred_f = lut[pred] if pred_f is None else pred_f
            score = _ssim_dense(pred_f[slices[q]], gt[slices[q]])
        else:
            score = _ssim_hist(h_fg, h_bg, lut)
        region += score * weight
    return float(max(0.0, obj * _SM_ALPHA + region * (1 - _SM_ALPHA)))


def weighted_f_measure(
    gt: np.ndarray, code: np.ndarray, lut: np.ndarray, bg_hist: np.ndarray
) -> float:
    """Weighted F-measure (β² = 1) of a pair whose GT has foreground (Margolin et al., §4).

    ``gt``: bool ``H×W``; ``code``: uint16 ``H×W``, ``256·gt + pred`` (the histogram code of
    :func:`sample_scores`); ``lut``: the normalised value of each prediction level
    (:func:`normalisation_lut`), so the error ``|p − gt|`` of a pixel is a lookup of its code;
    ``bg_hist``: ``(256,)`` prediction levels of the background pixels.

    The blurred error ``EA`` is only read on foreground pixels, so the nearest-foreground error is
    copied to background pixels within the kernel's reach only, and the blur runs on the
    foreground's bounding box plus that reach. Which foreground pixel is nearest (and the choice
    among equidistant ones) is scipy's feature transform, as in the reference, run on that box: it
    holds every foreground pixel, so the choice is the same as on the whole image. The distance
    weights of background pixels come from OpenCV's exact Euclidean transform; its float32
    distances are squared and rounded back to the exact integer square before the float64 root,
    which reproduces the reference's distances bit for bit wherever the square is below 2²²
    (distances up to 2048 pixels) and to float32 precision beyond.
    """
    h, w = gt.shape
    rows = np.flatnonzero(gt.any(axis=1))
    cols = np.flatnonzero(gt.any(axis=0))
    r = _WFM_RADIUS
    y0, y1 = max(rows[0] - r, 0), min(rows[-1] + r + 1, h)
    x0, x1 = max(cols[0] - r, 0), min(cols[-1] + r + 1, w)
    gt_c = gt[y0:y1, x0:x1]
    # |p − 0| on background codes, |p − 1| on foreground codes.
    error_lut = np.concatenate([lut, 1.0 - lut])
    error_c = error_lut[code[y0:y1, x0:x1]]
    spread = error_c.copy()
    bg = ~gt
    if bg.any():
        bg_c = ~gt_c
        reach = cv2.dilate(
            gt_c.view(np.uint8), _DILATE, borderType=cv2.BORDER_CONSTANT, borderValue=0
        )
        band = reach.view(bool) & bg_c
        if band.any():
            iy, ix = distance_transform_edt(bg_c, return_distances=False, return_indices=True)
            spread[band] = error_c[iy[band], ix[band]]
        d = cv2.distanceTransform(bg.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        decay = np.square(d, dtype=np.float64)
        np.rint(decay, out=decay)
        np.sqrt(decay, out=decay)
        # B = 2 − 0.5^(d/5) on background pixels, so FPw = Σ_bg E·B = 2·Σ_bg E − Σ_bg E·0.5^(d/5).
        decay *= np.log(0.5) / 5
        np.exp(decay, out=decay)
        # The error of background pixels, 0 on foreground ones (whose decay is 1).
        decay *= np.concatenate([lut, np.zeros_like(lut)])[code]
        fp_w = 2 * float(bg_hist @ lut) - float(decay.sum())
    else:
        fp_w = 0.0
    # Zero padding at the crop's edge is exact: beyond it lie the image border (zero-padded by the
    # reference too) or pixels out of the kernel's reach from every foreground pixel.
    blurred = cv2.sepFilter2D(
        spread, cv2.CV_64F, _WFM_KERNEL, _WFM_KERNEL, borderType=cv2.BORDER_CONSTANT
    )
    n_fg = int(np.count_nonzero(gt_c))
    ew_fg_sum = float(np.sum(np.minimum(blurred, error_c), where=gt_c))
    tp_w = n_fg - ew_fg_sum
    recall = 1 - ew_fg_sum / n_fg
    precision = tp_w / (tp_w + fp_w + EPS)
    return (1 + _WFM_BETA2) * recall * precision / (recall + _WFM_BETA2 * precision + EPS)


def _enhanced_alignment_sum(tp, pred_pos, n_fg: int, n: int):
    """Sum of the enhanced-alignment matrix for binary maps given by counts (Em, Fan et al. §3).

    ``tp``: foreground pixels predicted foreground, ``pred_pos``: pixels predicted foreground; both
    scalars or ``(256,)`` arrays (one entry per threshold).
    """
    if n_fg == 0:
        return n - pred_pos
    if n_fg == n:
        return pred_pos
    fp = pred_pos - tp
    fn = n_fg - tp
    tn = (n - pred_pos) - fn
    mean_pred = pred_pos / n
    mean_gt = n_fg / n
    total = 0
    for part, a, b in (
        (tp, 1 - mean_pred, 1 - mean_gt),
        (fp, 1 - mean_pred, 0 - mean_gt),
        (fn, 0 - mean_pred, 1 - mean_gt),
        (tn, 0 - mean_pred, 0 - mean_gt),
    ):
        align = 2 * (a * b) / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * part
    return total


def threshold_curves(
    fg_hist: np.ndarray, bg_hist: np.ndarray, lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fβ, Em and IoU at the 256 thresholds from the foreground/background level histograms.

    The reference bins the normalised map as ``uint8(p·255)``; each original level is moved to that
    bin, and cumulative sums from the top give the counts at every threshold at once.
    Returns three float64 ``(256,)`` curves, threshold 255 first.
    """
    bins = (lut * 255).astype(np.uint8)
    fg = np.bincount(bins, weights=fg_hist, minlength=256).astype(np.int64)
    bg = np.bincount(bins, weights=bg_hist, minlength=256).astype(np.int64)
    tp = np.cumsum(fg[::-1])
    fp = np.cumsum(bg[::-1])
    n_fg = int(fg_hist.sum())
    n = n_fg + int(bg_hist.sum())

    pred_pos = tp + fp
    pos = np.where(pred_pos == 0, 1, pred_pos)
    precision = tp / pos
    recall = tp / max(n_fg, 1)
    num = (1 + _FM_BETA2) * precision * recall
    fm = num / np.where(num == 0, 1, _FM_BETA2 * precision + recall)

    em = _enhanced_alignment_sum(tp, pred_pos, n_fg, n) / (n - 1 + EPS)
    em = np.asarray(em, dtype=np.float64)

    union = (n_fg + fp).astype(np.float64)
    iou = np.divide(tp, union, out=np.zeros_like(union), where=union != 0)
    return fm, em, iou


def adaptive_scores(
    fg_hist: np.ndarray, bg_hist: np.ndarray, lut: np.ndarray, mean_pred: float
) -> tuple[float, float, float]:
    """Fβ, Em and IoU of the map binarised at ``min(2·mean(p), 1)`` (pixels ``≥`` the threshold)."""
    above = lut >= min(2 * mean_pred, 1.0)
    inter = int(fg_hist[above].sum())
    pred_pos = inter + int(bg_hist[above].sum())
    n_fg = int(fg_hist.sum())
    n = n_fg + int(bg_hist.sum())
    if inter == 0:
        fm = 0.0
    else:
        pre, rec = inter / pred_pos, inter / n_fg
        fm = (1 + _FM_BETA2) * pre * rec / (_FM_BETA2 * pre + rec)
    em = float(_enhanced_alignment_sum(inter, pred_pos, n_fg, n) / (n - 1 + EPS))
    union = pred_pos + n_fg - inter
    iou = 0.0 if union == 0 else inter / union
    return fm, em, iou


def sample_scores(pred: np.ndarray, gt: np.ndarray) -> SampleScores:
    """Score one prediction against its GT (no class check; see :mod:`ovcamo.metrics.ovcos`).

    ``pred``: uint8 ``H×W`` prediction as written to PNG; ``gt``: bool ``H×W`` (any non-zero pixel of
    the mask file is foreground). Shapes must match.
    """
    if pred.dtype != np.uint8 or pred.ndim != 2:
        raise TypeError(f"prediction must be a uint8 H×W array, got {pred.dtype} {pred.shape}")
    if gt.dtype != bool:
        raise TypeError(f"GT must be a bool H×W array, got {gt.dtype}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from GT shape {gt.shape}")
    h, w = gt.shape
    gt = np.ascontiguousarray(gt)
    n_fg = int(np.count_nonzero(gt))

    code = np.left_shift(gt.view(np.uint8), 8, dtype=np.uint16)
    code |= pred
    if 0 < n_fg < gt.size:
        # Reference quadrant corner: rounded foreground centroid, then +1 (MATLAB's 1:X ranges).
        rows = np.count_nonzero(gt, axis=1)
        cols = np.count_nonzero(gt, axis=0)
        cy = np.round(float(rows @ np.arange(h)) / n_fg)
        cx = np.round(float(cols @ np.arange(w)) / n_fg)
        split = (int(cy) + 1, int(cx) + 1)
        cy_, cx_ = split
        quads = [code[:cy_, :cx_], code[:cy_, cx_:], code[cy_:, :cx_], code[cy_:, cx_:]]
        quad_hists = np.stack(
            [np.bincount(q.ravel(), minlength=512).reshape(2, 256) for q in quads]
        )
        hist = quad_hists.sum(axis=0)
    else:
        hist = np.bincount(code.ravel(), minlength=512).reshape(2, 256)
    bg_hist, fg_hist = hist[0], hist[1]

    lut = normalisation_lut(bg_hist + fg_hist)
    n = gt.size
    mean_pred = float((bg_hist + fg_hist) @ lut) / n
    threshold = min(2 * mean_pred, 1.0)
    if np.any(np.abs(lut[(bg_hist + fg_hist) > 0] - threshold) < 1e-9):
        # A level sits on the adaptive threshold: take the mean exactly as the reference does so
        # that the >= comparison falls the same way.
        mean_pred = float(np.mean(lut[pred]))
    mae = (float(bg_hist @ lut) + float(fg_hist @ (1 - lut))) / n

    if n_fg == 0:
        sm, wfm = 1 - mean_pred, 0.0
    else:
        sm = mean_pred if n_fg == n else s_measure(pred, gt, quad_hists, lut, split)
        wfm = weighted_f_measure(gt, code, lut, bg_hist)

    fm, em, iou = threshold_curves(fg_hist, bg_hist, lut)
    adpfm, adpem, adpiou = adaptive_scores(fg_hist, bg_hist, lut, mean_pred)
    return SampleScores(
        sm=float(sm),
        wfm=float(wfm),
        mae=mae,
        adpfm=float(adpfm),
        adpem=float(adpem),
        adpiou=float(adpiou),
        fm=fm,
        em=em,
        iou=iou,
    )
