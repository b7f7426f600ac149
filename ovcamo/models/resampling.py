"""Adaptive average pooling and bilinear resizing as products with their (cached) matrices.

Both are fixed linear maps, so the products give the kernels' values to float rounding. Where
BaCLIP uses them (the CCE's pooling of its small maps; the mask logits' ×4 upsampling, one
channel) they cost a tenth and a quarter of the CPU time of PyTorch's ``adaptive_avg_pool2d`` and
``upsample_bilinear2d``, forward and backward; on many-channel maps the resize is slower than the
kernel, so the neck and the CCE keep ``F.interpolate`` (docs/baclip.md, "Under 15 minutes").
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=64)
def _pool_matrix(in_size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    return F.adaptive_avg_pool2d(
        torch.eye(in_size[0] * in_size[1], dtype=torch.float64).view(-1, 1, *in_size), out_size
    ).flatten(1)


@functools.lru_cache(maxsize=64)
def _linear_matrix(n_in: int, n_out: int) -> Tensor:
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0].t()


def adaptive_pool(x: Tensor, out_size: tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, out_size).flatten(2)``: ``B×C×h×w`` → ``B×C×(oh·ow)``."""
    matrix = _pool_matrix(tuple(x.shape[-2:]), tuple(out_size))
    return x.flatten(2) @ matrix.to(device=x.device, dtype=x.dtype)


def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for ``B×C×h×w`` maps: one
    product per axis (bilinear resizing is separable)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    rows = _linear_matrix(h, size[0]).to(device=x.device, dtype=x.dtype)
    cols = _linear_matrix(w, size[1]).to(device=x.device, dtype=x.dtype)
    return rows @ x @ cols.t()
