"""CCE: the cascade of multi-frequency multi-scale attention (MFMSA) blocks
(docs/design.md, "BaCLIP").

The multi-frequency channel attention follows FcaNet (Qin et al., ICCV 2021): 2-D DCT basis
filters at the 16 frequencies FcaNet selects on a 7×7 grid, applied to the map pooled to 7×7; the
per-channel average, max and min of each filtered map (MADGNet's MFMSA statistics), averaged over
the frequencies, go through one shared bottleneck MLP and a sigmoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovcamo.models.resampling import adaptive_pool

# FcaNet's "top16" frequencies (u, v) on a 7×7 DCT grid, best first.
TOP16_U = (0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2)
TOP16_V = (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2)
MAX_CCE_BLOCKS = 5


def dct_1d(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``n×n``: row ``k`` is the k-th basis vector of length n."""
    pos = torch.arange(n, dtype=torch.float64)
    freq = torch.arange(n, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi * freq * (pos + 0.5) / n) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


def dct_basis_2d(size: int, frequencies: list[tuple[int, int]]) -> Tensor:
    """2-D DCT basis filters ``F×size×size`` for the given ``(u, v)`` frequencies.

    Filters are outer products of orthonormal 1-D DCT-II vectors, so the full set of ``size²``
    filters is an orthonormal basis of ``size×size`` maps.
    """
    d = dct_1d(size)
    return torch.stack([torch.outer(d[u], d[v]) for u, v in frequencies]).float()


def top_frequencies(num_frequencies: int, size: int = 7) -> list[tuple[int, int]]:
    """The first ``num_frequencies`` of FcaNet's ranking, rescaled from the 7×7 grid to ``size``."""
    if not 1 <= num_frequencies <= len(TOP16_U):
        raise ValueError(f"num_frequencies must be in 1..{len(TOP16_U)}, got {num_frequencies}")
    if size < 7:
        raise ValueError(
            f"the DCT grid must be at least 7×7 to hold FcaNet's frequencies, got {size}"
        )
    scale = size // 7
    return [(u * scale, v * scale) for u, v in zip(TOP16_U, TOP16_V, strict=False)][
        :num_frequencies
    ]


class MultiFrequencyChannelAttention(nn.Module):
    """Channel attention from DCT-filtered statistics: ``B×C×h×w`` → ``χ = x ⊗ σ(…)`` same shape."""

    def __init__(
        self, channels: int, reduction: int = 16, num_frequencies: int = 16, dct_size: int = 7
    ) -> None:
        super().__init__()
        self.dct_size = dct_size
        basis = dct_basis_2d(dct_size, top_frequencies(num_frequencies, dct_size))
        self.register_buffer("dct_filters", basis, persistent=False)
        hidden = max(channels // reduction, 4)
        self.bottleneck = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        pooled = adaptive_pool(x, (self.dct_size, self.dct_size))  # B×C×S²
        filters = self.dct_filters.flatten(1).to(x.dtype)  # F×S²
        # The mean over positions of a filtered map is linear: one product with the filters.
        mean = (pooled @ filters.t()).mean(-1) / filters.shape[1]
        # Max and min: the positions are found on the B×F×C×S² products without autograd, and
        # only the B×F×C winners are recomputed with it, so the backward pass touches B×F×C
        # entries instead of zero-filling and scattering into the whole product (which cost a
        # third of a micro training step). Values and gradients are max's/min's.
        with torch.no_grad():
            filtered = pooled[:, None] * filters[None, :, None]
            at_max, at_min = filtered.max(-1).indices, filtered.min(-1).indices
        rows = (
            torch.arange(b, device=x.device)[:, None, None] * c
            + torch.arange(c, device=x.device)[None, None, :]
        ) * filters.shape[1]
        freq = torch.arange(filters.shape[0], device=x.device)[None, :, None]
        flat = pooled.reshape(-1)
        top = (flat[rows + at_max] * filters[freq, at_max]).mean(1)
        bottom = (flat[rows + at_min] * filters[freq, at_min]).mean(1)
        logits = sum(self.bottleneck(s) for s in (mean, top, bottom))
        return x * torch.sigmoid(logits)[:, :, None, None]


class MFMSA(nn.Module):
    """One multi-frequency multi-scale attention block on ``E_v`` (``B×C×h×w`` → same shape).

    Per scale i ∈ {×1, ×½, ×¼}: ``χᵢ`` = multi-frequency channel attention of the pooled map,
    ``Fᵢ = σ(Conv1×1(χᵢ))``, ``Bᵢ = 1 − Fᵢ``, ``λᵢ = Conv3×3(αᵢ·χᵢ⊗Fᵢ + βᵢ·χᵢ⊗Bᵢ)``;
    ``χ = λ₁ + Up2(λ₂) + Up4(λ₃)``, output ``E_v + χ``.
    """

    scales = (1, 2, 4)

    def __init__(
        self, channels: int, reduction: int = 16, num_frequencies: int = 16, dct_size: int = 7
    ) -> None:
        super().__init__()
        n = len(self.scales)
        self.mfca = nn.ModuleList(
            MultiFrequencyChannelAttention(channels, reduction, num_frequencies, dct_size)
            for _ in range(n)
        )
        self.foreground = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in range(n))
        self.fuse = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(n))
        # α = β would make the block blind to Fᵢ (χF + χ(1−F) = χ) and give the foreground conv no
        # gradient at initialisation; starting with background features at half weight breaks that.
        self.alpha = nn.Parameter(torch.ones(n))
        self.beta = nn.Parameter(torch.full((n,), 0.5))

    def forward(self, e_v: Tensor) -> Tensor:
        b, c, h, w = e_v.shape
        chi = torch.zeros_like(e_v)
        for i, s in enumerate(self.scales):
            size = (math.ceil(h / s), math.ceil(w / s))
            x = e_v if s == 1 else adaptive_pool(e_v, size).view(b, c, *size)
            chi_i = self.mfca[i](x)
            fg = torch.sigmoid(self.foreground[i](chi_i))
            lam = self.fuse[i](self.alpha[i] * chi_i * fg + self.beta[i] * chi_i * (1.0 - fg))
            if s != 1:
                lam = F.interpolate(lam, size=(h, w), mode="bilinear", align_corners=False)
            chi = chi + lam
        return e_v + chi


class CCE(nn.Module):
    """Camouflage context enhancement: ``num_blocks`` MFMSA blocks in cascade (0 = identity, the
    ablation without CCE). ``B×C×h×w`` → same shape."""

    def __init__(
        self,
        channels: int,
        num_blocks: int = 3,
        reduction: int = 16,
        num_frequencies: int = 16,
        dct_size: int = 7,
    ) -> None:
        super().__init__()
        if not 0 <= num_blocks <= MAX_CCE_BLOCKS:
            raise ValueError(
                f"model.cce.num_blocks must be in 0..{MAX_CCE_BLOCKS}, got {num_blocks}"
            )
        self.blocks = nn.Sequential(
            *(MFMSA(channels, reduction, num_frequencies, dct_size) for _ in range(num_blocks))
        )

    def forward(self, e_v: Tensor) -> Tensor:
        return self.blocks(e_v)
