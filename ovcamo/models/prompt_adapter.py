"""Adaptive text prompts: refined class tokens → SAM sparse prompt embeddings
(docs/design.md, "BaCLIP").

``P_t = SelfAttention(E_t)`` (switchable), projected to SAM's prompt width. Which of the K
candidate-class tokens become prompts is ``model.prompt.mode``, ranked/weighted by CLIP's
image–text score of the whole image (``s = logit_scale · cos(image, class)``, ``B×K``):

- ``all`` (the paper): every candidate's token, in the given class order.
- ``weighted`` (the micro model): one prompt, ``Σ_k softmax(s)_k · P_t,k``. The decoder sees the same
  number of prompts whatever the vocabulary size (14 base classes in training, 61 novel at test).
- ``topk``: the ``k`` tokens of the highest-scoring classes, best first (``k`` is clipped to K).

The paper then feeds the prompts through SAM's prompt encoder
(:func:`ovcamo.models.sam_decoder.text_prompt_embeddings`, ``model.prompt.prompt_encoder``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

PromptMode = Literal["weighted", "topk", "all"]
PROMPT_MODES: tuple[str, ...] = ("weighted", "topk", "all")


class PromptAdapter(nn.Module):
    """``E_t`` ``B×K×C`` + image–text scores ``B×K`` → sparse prompt embeddings ``B×N×C_p``."""

    def __init__(
        self,
        dim: int,
        prompt_dim: int,
        self_attention: bool = True,
        num_heads: int = 8,
        mode: PromptMode = "weighted",
        k: int = 3,
    ) -> None:
        super().__init__()
        if mode not in PROMPT_MODES:
            raise ValueError(f"model.prompt.mode must be one of {PROMPT_MODES}, got {mode!r}")
        if k < 1:
            raise ValueError(f"model.prompt.k must be ≥ 1, got {k}")
        self.mode = mode
        self.k = k
        self.norm = nn.LayerNorm(dim) if self_attention else None
        self.self_attention = (
            nn.MultiheadAttention(dim, num_heads, batch_first=True) if self_attention else None
        )
        self.proj = nn.Linear(dim, prompt_dim)

    def forward(self, e_t: Tensor, scores: Tensor) -> Tensor:
        """Turn the refined class tokens of each image into its prompt set.

        Args:
            e_t: ``B×K×C`` refined text tokens (one set per image).
            scores: ``B×K`` image–text logits used to weight or rank the classes.
        Returns:
            ``B×N×C_p`` with N = 1 (``weighted``), min(k, K) (``topk``) or K (``all``).
        """
        p_t = e_t
        if self.self_attention is not None:
            x = self.norm(e_t)
            p_t = e_t + self.self_attention(x, x, x, need_weights=False)[0]
        p_t = self.proj(p_t)
        if self.mode == "weighted":
            weights = scores.softmax(dim=-1).to(p_t.dtype)
            return (weights.unsqueeze(-1) * p_t).sum(dim=1, keepdim=True)
        if self.mode == "topk":
            idx = scores.topk(min(self.k, scores.shape[1]), dim=-1).indices
            return torch.gather(p_t, 1, idx.unsqueeze(-1).expand(-1, -1, p_t.shape[-1]))
        return p_t
