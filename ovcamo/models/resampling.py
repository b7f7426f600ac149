"""Adaptive average pooling and bilinear resizing as products with their matrices, built in float64
and cached per size, dtype and device.

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
def _pool_matrix(
    in_size: tuple[int, int], out_size: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    eye = torch.eye(in_size[0] * in_size[1], dtype=torch.float64).view(-1, 1, *in_size)
    return F.adaptive_avg_pool2d(eye, out_size).flatten(1).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _linear_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in)
    matrix = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0].t()
    return matrix.to(device=device, dtype=dtype)


def adaptive_pool(x: Tensor, out_size: tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, out_size).flatten(2)``: ``B×C×h×w`` → ``B×C×(oh·ow)``."""
    return x.flatten(2) @ _pool_matrix(tuple(x.shape[-2:]), tuple(out_size), x.dtype, x.device)


def resize_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` for ``B×C×h×w`` maps: one
    product per axis (bilinear resizing is separable)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    rows = _linear_matrix(h, size[0], x.dtype, x.device)
    cols = _linear_matrix(w, size[1], x.dtype, x.device)
    return rows @ x @ cols.t()
