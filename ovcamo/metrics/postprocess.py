"""Turn a segmenter's mask logits into the uint8 prediction the OVCOS metrics score
(docs/evaluation.md)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8_prediction(logits: torch.Tensor, gt_size: tuple[int, int]) -> np.ndarray:
    """sigmoid → per-image min-max → bilinear resize to the GT size → ``uint8(p·255)``.

    ``logits``: ``H'×W'`` or ``1×H'×W'`` mask logits (any float dtype, any device); ``gt_size``:
    ``(H, W)`` of the GT mask. Returns a uint8 ``H×W`` array. The last step truncates, as the
    official OVCamo test loop does (``(pred * 255).astype(np.uint8)``); a constant map becomes 0.
    """
    x = logits.detach()
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"expected H'×W' or 1×H'×W' logits, got shape {tuple(logits.shape)}")
    h, w = (int(v) for v in gt_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"gt_size must be positive (H, W), got {gt_size}")
    p = torch.sigmoid(x.float())
    lo, hi = p.min(), p.max()
    p = (p - lo) / (hi - lo) if hi > lo else torch.zeros_like(p)
    if p.shape != (h, w):
        p = F.interpolate(p[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return (p.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
