"""What sits between the frozen CLIP trunk and BaCLIP's decoder (docs/baclip.md).

The paper feeds one trunk map to MREM, whose own 1×1 convolution (``Conv1``) brings it to MREM's
width: :class:`TrunkLevel` (``model.neck.enabled: false``, the paper configuration) picks that map,
the trunk level whose stride is nearest ``model.neck.stride``, and adds no parameter.

The additions the micro configuration uses (each a named option, off in the paper's):

- :class:`FeatureNeck` (``model.neck.enabled: true``) follows SAM 2's image encoder: one feature
  pyramid (FPN) over every trunk level; the level at ``stride`` is the image embedding. SAM 2's FPN
  is linear; ``refine`` ends each output in GroupNorm + ReLU, because the frozen CLIP's fine maps
  are low-level and the decoder adds them to its upsampling with only one activation after.
- :class:`HighResSkips` (``model.decoder.high_res``): the FPN's finer levels become the two
  high-resolution skips that SAM 2's mask decoder adds while it upsamples.
- :func:`image_projection` (``model.decoder.image_proj``): 1×1 + LayerNorm2d before the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn

from ovcamo.models import clip_backbone
from ovcamo.models.conv_decoder import conv_gn_relu


class FeatureNeck(nn.Module):
    """FPN over the trunk levels, finest first; returns the levels from the finest up to the
    image-embedding level (the level whose stride is nearest ``stride``), each with ``dim``
    channels. A level repeated at one stride (a ViT's single map) enters once.

    Args:
        in_channels: channels of the trunk levels, finest first.
        strides: their strides in pixels.
        dim: the neck's width (MREM's input).
        stride: the image embedding's stride.
        refine: each output a 3×3 convolution + GroupNorm + ReLU instead of a plain 3×3.
        cpu_bf16: on CPU, run under bf16 autocast when the processor computes bf16 natively and
            hand fp32 levels on (the micro recipe: the stride-4 convolution is a tenth of a CPU
            training step); elsewhere, and on CUDA, the caller's precision.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[float],
        dim: int,
        stride: int,
        refine: bool = False,
        cpu_bf16: bool = False,
    ) -> None:
        super().__init__()
        self.cpu_bf16 = bool(cpu_bf16) and clip_backbone.native_cpu_bf16()
        self.used = [i for i in range(len(strides)) if strides[i] not in strides[i + 1 :]]
        self.embedding_level = nearest_level([strides[i] for i in self.used], stride)
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels[i], dim, 1) for i in self.used)
        self.output = nn.ModuleList(
            conv_gn_relu(dim, dim) if refine else nn.Conv2d(dim, dim, 3, padding=1)
            for _ in range(self.embedding_level + 1)
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if not (self.cpu_bf16 and features[0].device.type == "cpu"):
            return self._forward(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            levels = self._forward(features)
        return [x.to(features[0].dtype) for x in levels]

    def _forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        features = [features[i] for i in self.used]
        x = None
        outputs: list[Tensor] = []
        for i in range(len(features) - 1, -1, -1):
            lateral = self.lateral[i](features[i])
            if x is not None:
                lateral = lateral + F.interpolate(
                    x, size=lateral.shape[-2:], mode="bilinear", align_corners=False
                )
            x = lateral
            if i <= self.embedding_level:
                outputs.append(self.output[i](x))
        return outputs[::-1]


def nearest_level(strides: Sequence[float], stride: float) -> int:
    """Index of the trunk level whose stride is nearest ``stride`` (the coarser one on a tie; of a
    stride repeated over several levels, a ViT's single map, the last)."""
    best = min(abs(s - stride) for s in strides)
    return max(i for i, s in enumerate(strides) if abs(s - stride) == best)


class TrunkLevel(nn.Module):
    """No neck: the trunk level nearest ``stride``, as the one-element level list the decoder
    path reads (``[B×C_i×h×w]``). No parameters."""

    def __init__(self, strides: Sequence[float], stride: int) -> None:
        super().__init__()
        self.index = nearest_level(strides, stride)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [features[self.index]]


class HighResSkips(nn.Module):
    """SAM 2's high-resolution features: two 1×1 projections of neck levels, added inside the mask
    decoder's upsampling at 2× and 4× the embedding's resolution (``decoder_dim/4`` and
    ``decoder_dim/8`` channels). Each takes the coarsest level at least as fine as its target,
    else the finest level, resized when the sizes differ.

    ``zero_init``: both projections start at zero, so at step 0 the decoder upsamples exactly as
    without skips and a SAM checkpoint's decoder keeps its meaning (the weights still get
    gradients and grow from there). Off: PyTorch's default initialisation (the micro model's).
    """

    def __init__(self, dim: int, decoder_dim: int, zero_init: bool = False) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(dim, decoder_dim // 4, 1)
        self.conv_s0 = nn.Conv2d(dim, decoder_dim // 8, 1)
        if zero_init:
            for p in self.parameters():
                nn.init.zeros_(p)

    @staticmethod
    def _source(levels: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        fine_enough = [x for x in levels if x.shape[-2] >= size[0]]
        x = fine_enough[-1] if fine_enough else levels[0]
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def forward(self, levels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Neck levels (finest first, the embedding last) → ``(feat_s1, feat_s0)``."""
        h, w = levels[-1].shape[-2:]
        s1 = self.conv_s1(self._source(levels, (2 * h, 2 * w)))
        s0 = self.conv_s0(self._source(levels, (4 * h, 4 * w)))
        return s1, s0


def image_projection(dim: int, decoder_dim: int) -> nn.Module:
    """Neck width → decoder width, layer-normalised as SAM's image encoder leaves its embeddings
    (the decoder's weights, SAM's or trained here, expect that scale)."""
    return nn.Sequential(nn.Conv2d(dim, decoder_dim, 1, bias=False), LayerNorm2d(decoder_dim))
