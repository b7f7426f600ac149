"""Prompts of the diffusers generators: CLIP text embeddings, the token positions of given words,
and the prompt dropout that classifier-free guidance needs at training time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from generation.sd.parts import SDParts

#: Share of training steps per row that see the empty prompt, as in common Stable Diffusion
#: fine-tuning: the sampler's classifier-free guidance needs an unconditional model.
UNCOND_PROB = 0.1


@torch.no_grad()
def encode_prompt(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts → (``input_ids`` ``B×L``, last hidden state ``B×L×D``), padded to the max length."""
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    device = next(text_encoder.parameters()).device
    return ids, text_encoder(ids.to(device))[0]


def word_token_positions(
    tokenizer: CLIPTokenizer, input_ids: torch.Tensor, words: Sequence[str]
) -> list[list[int]]:
    """Positions in each row of ``input_ids`` (``B×L``) where the tokens of any of ``words`` occur."""
    out: list[list[int]] = []
    patterns = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    for row in input_ids.tolist():
        hits: set[int] = set()
        for pat in patterns:
            for i in range(len(row) - len(pat) + 1):
                if row[i : i + len(pat)] == pat:
                    hits.update(range(i, i + len(pat)))
        out.append(sorted(hits))
    return out


@dataclass
class Captions:
    """The encoded prompts of a training set and the encoded empty prompt.

    ``ids`` ``N×L`` and ``embeds`` ``N×L×D``, one row per training sample; ``empty`` ``1×L×D``.
    :meth:`batch` replaces each row by the empty prompt with probability ``uncond_prob``
    (classifier-free guidance's prompt dropout), so the one model learns the conditional and the
    unconditional noise prediction the sampler's guidance mixes.
    """

    ids: torch.Tensor
    embeds: torch.Tensor
    empty: torch.Tensor
    uncond_prob: float = UNCOND_PROB

    @classmethod
    def encode(
        cls,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        prompts: Sequence[str],
        uncond_prob: float = UNCOND_PROB,
    ) -> Captions:
        if not 0.0 <= uncond_prob <= 1.0:
            raise ValueError(f"train.uncond_prob must lie in [0, 1], got {uncond_prob}")
        ids, embeds = encode_prompt(tokenizer, text_encoder, prompts)
        _, empty = encode_prompt(tokenizer, text_encoder, [""])
        return cls(ids, embeds, empty, float(uncond_prob))

    @classmethod
    def for_training(
        cls, parts: SDParts, prompts: Sequence[str], train_cfg: Mapping[str, Any]
    ) -> Captions:
        """``prompts`` encoded by ``parts``' text encoder, dropped with probability
        ``train_cfg.uncond_prob`` (:data:`UNCOND_PROB` when unset)."""
        prob = float(train_cfg.get("uncond_prob", UNCOND_PROB))
        return cls.encode(parts.tokenizer, parts.text_encoder, prompts, prob)

    def batch(
        self, idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``B×L×D`` of rows ``idx`` with prompt dropout, and the bool ``B`` vector of
        the rows that kept their prompt."""
        keep = torch.rand(len(idx), generator=generator) >= self.uncond_prob
        keep = keep.to(self.embeds.device)
        embeds = torch.where(
            keep[:, None, None], self.embeds[idx.to(self.embeds.device)], self.empty
        )
        return embeds, keep
