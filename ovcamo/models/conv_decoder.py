"""First rung of the ablation ladder: frozen CLIP + a plain convolutional decoder
(docs/design.md, "BaCLIP")."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(min(32, out_channels // 4) or 1, out_channels),
        nn.ReLU(inplace=True),
    )


class ConvDecoder(nn.Module):
    """FPN-style top-down decoder over the four trunk maps, no text and no attention.

    Args:
        in_channels: channels of the trunk maps at strides ≈4, 8, 16, 32.
        dim: decoder width.
    """

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_gn_relu(dim, dim) for _ in in_channels[:-1])
        self.head = nn.Sequential(conv_gn_relu(dim, dim), nn.Conv2d(dim, 1, 1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Four maps ``B×C_i×h_i×w_i`` (finest first) → mask logits ``B×1×h_0×w_0``."""
        x = self.lateral[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            x = F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](x + lateral)
        return self.head(x)
