"""MREM, the mutual refinement of vision and text by bidirectional cross-attention
(docs/design.md, "BaCLIP")."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

MREMMode = Literal["both", "text_to_vision", "vision_to_text", "off"]
MREM_MODES: tuple[str, ...] = ("both", "text_to_vision", "vision_to_text", "off")


class CrossAttention(nn.Module):
    """Multi-head cross-attention ``softmax(Q Kᵀ/√d) V``, heads concatenated, linear out."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MREM width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        """``B×N×C`` queries attend to ``B×M×C`` context → ``B×N×C``."""
        b, n, c = queries.shape
        h = self.num_heads

        def heads(x: Tensor) -> Tensor:
            return x.view(b, x.shape[1], h, c // h).transpose(1, 2)

        attn = F.scaled_dot_product_attention(
            heads(self.q(queries)), heads(self.k(context)), heads(self.v(context))
        )
        return self.out(attn.transpose(1, 2).reshape(b, n, c))


class MREM(nn.Module):
    """Bidirectional cross-attention between the visual map and the class text tokens.

    ``f_v`` (Conv1×1 to C) and ``f_t`` (Linear to C) bring both modalities to width C; then
    ``F_v = softmax(Q_v K_tᵀ/√d) V_t`` (text → vision) and ``F_t = softmax(q_t K_vᵀ/√d) V_v``
    (vision → text), both computed from the *unrefined* inputs, are added residually:
    ``E_v = f_v + F_v``, ``E_t = f_t + F_t``.

    ``mode`` switches the directions for the ablations: ``text_to_vision`` leaves ``E_t = f_t``
    (so it does not depend on the image), ``vision_to_text`` leaves ``E_v = f_v`` (independent
    of the classes), ``off`` keeps both projections only.
    """

    def __init__(
        self,
        visual_channels: int,
        text_channels: int,
        dim: int,
        num_heads: int = 8,
        mode: MREMMode = "both",
    ) -> None:
        super().__init__()
        if mode not in MREM_MODES:
            raise ValueError(f"model.mrem.mode must be one of {MREM_MODES}, got {mode!r}")
        self.mode = mode
        self.f_v = nn.Conv2d(visual_channels, dim, 1)
        self.f_t = nn.Linear(text_channels, dim)
        # Pre-norm keeps the frozen CLIP statistics of both modalities on one scale.
        self.norm_v = nn.LayerNorm(dim) if mode != "off" else None
        self.norm_t = nn.LayerNorm(dim) if mode != "off" else None
        self.t2v = CrossAttention(dim, num_heads) if mode in ("both", "text_to_vision") else None
        self.v2t = CrossAttention(dim, num_heads) if mode in ("both", "vision_to_text") else None

    def forward(self, visual: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Refine both modalities.

        Args:
            visual: ``B×C_v×h×w`` visual map.
            text: ``K×D`` class embeddings shared by the batch, or ``B×K×D`` per image.
        Returns:
            ``E_v`` ``B×C×h×w`` and ``E_t`` ``B×K×C``.
        """
        v = self.f_v(visual)
        b, c, h, w = v.shape
        t = self.f_t(text)
        if t.ndim == 2:
            t = t.unsqueeze(0).expand(b, -1, -1)
        v_tokens = v.flatten(2).transpose(1, 2)
        if self.mode == "off":
            return v, t
        nv, nt = self.norm_v(v_tokens), self.norm_t(t)
        e_v = v_tokens + self.t2v(nv, nt) if self.t2v is not None else v_tokens
        e_t = t + self.v2t(nt, nv) if self.v2t is not None else t
        return e_v.transpose(1, 2).reshape(b, c, h, w), e_t
