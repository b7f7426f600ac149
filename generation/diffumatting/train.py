"""DiffuMatting training step (ECCV 2024, DESIGN §7): noise + green-background control + detail +
latent matting losses on green-canvas images, and the loop that trains the micro model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from generation.diffumatting.components import encode_prompt, word_token_positions
from generation.diffumatting.model import (
    GreenAttentionStore,
    MattingHead,
    decoder_features,
    detail_loss,
    green_background_loss,
    matting_loss,
)

log = logging.getLogger(__name__)

#: Pure green in the model's [−1, 1] pixel space.
GREEN = torch.tensor([-1.0, 1.0, -1.0])


def green_canvas(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Recolour the background to pure green: ``x·M + green·(1 − M)``; ``B×3×H×W`` in [−1, 1]."""
    return images * masks + GREEN.to(images).view(1, 3, 1, 1) * (1 - masks)


@dataclass
class LossWeights:
    """λ of each DiffuMatting loss term (the noise loss has weight 1)."""

    green: float = 1.0
    detail: float = 1.0
    matting: float = 1.0


@dataclass
class DiffuMattingBatch:
    """Green-canvas images ``B×3×H×W`` in [−1, 1], masks ``B×1×H×W``, prompt embeddings
    ``B×L×D`` and, per row, the token positions of the green word(s)."""

    images: torch.Tensor
    masks: torch.Tensor
    prompt_embeds: torch.Tensor
    green_positions: list[list[int]]


def predicted_x0(
    scheduler: DDPMScheduler, model_output: torch.Tensor, zt: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """ẑ₀ from the UNet output (ε- or v-prediction) via the scheduler's ᾱ_t."""
    abar = scheduler.alphas_cumprod.to(zt)[t].view(-1, 1, 1, 1)
    if scheduler.config.prediction_type == "epsilon":
        return (zt - (1 - abar).sqrt() * model_output) / abar.sqrt()
    if scheduler.config.prediction_type == "v_prediction":
        return abar.sqrt() * zt - (1 - abar).sqrt() * model_output
    raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")


def diffumatting_step(
    unet: UNet2DConditionModel,
    head: MattingHead,
    vae: AutoencoderKL,
    scheduler: DDPMScheduler,
    store: GreenAttentionStore,
    batch: DiffuMattingBatch,
    weights: LossWeights,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One DiffuMatting training step; returns every loss term and their weighted ``total``.

    The VAE is frozen: z₀ is its scaled posterior sample, and the matting head reads the decoder
    features of z₀ (no gradient into the decoder), trained against the mask with L1 + Dice.
    ``store`` must be installed on ``unet`` (:func:`install_green_probe`).
    """
    device = batch.images.device
    sf = vae.config.scaling_factor
    with torch.no_grad():
        z0 = vae.encode(batch.images).latent_dist.sample(generator=generator) * sf
    noise = torch.randn(z0.shape, generator=generator, device="cpu").to(device)
    t = torch.randint(
        0, scheduler.config.num_train_timesteps, (len(z0),), generator=generator, device="cpu"
    ).to(device)
    zt = scheduler.add_noise(z0, noise, t)
    store.reset(batch.green_positions, tuple(z0.shape[-2:]))
    out = unet(zt, t, encoder_hidden_states=batch.prompt_embeds).sample
    target = (
        noise
        if scheduler.config.prediction_type == "epsilon"
        else scheduler.get_velocity(z0, noise, t)
    )
    losses = {"noise": F.mse_loss(out, target)}
    losses["green"] = green_background_loss(store.maps, batch.masks)
    losses["detail"] = detail_loss(predicted_x0(scheduler, out, zt, t), z0, batch.masks)
    with torch.no_grad(), decoder_features(vae) as feats:
        vae.decode(z0 / sf)
    losses["matting"] = matting_loss(head(feats[-1]), batch.masks)
    losses["total"] = (
        losses["noise"]
        + weights.green * losses["green"]
        + weights.detail * losses["detail"]
        + weights.matting * losses["matting"]
    )
    return losses


@dataclass
class TrainHistory:
    """Loss of every term at every step."""

    steps: list[dict[str, float]] = field(default_factory=list)

    def mean(self, key: str, first: int | None = None, last: int | None = None) -> float:
        rows = self.steps[:first] if first else self.steps[-last:] if last else self.steps
        return sum(r[key] for r in rows) / len(rows)


def train_diffumatting(
    unet: UNet2DConditionModel,
    head: MattingHead,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler: DDPMScheduler,
    store: GreenAttentionStore,
    images: torch.Tensor,
    masks: torch.Tensor,
    class_names: Sequence[str],
    train_cfg: Mapping[str, Any],
) -> TrainHistory:
    """Train ``unet`` and ``head`` on green canvases of ``images``/``masks`` (``N×3×H×W``,
    ``N×1×H×W``) with the prompt template ``train_cfg.prompt`` filled by each class name.

    ``train_cfg`` keys: ``steps``, ``batch_size``, ``lr``, ``prompt``, ``green_words``,
    ``weights`` (``green``, ``detail``, ``matting``), ``seed`` and optionally ``head_lr`` (the
    matting head's learning rate, ``lr`` by default).
    """
    device = next(unet.parameters()).device
    g = torch.Generator().manual_seed(int(train_cfg.get("seed", 0)))
    prompts = [str(train_cfg["prompt"]).format(c) for c in class_names]
    ids, embeds = encode_prompt(tokenizer, text_encoder, prompts)
    positions = word_token_positions(tokenizer, ids, list(train_cfg["green_words"]))
    if not all(positions):
        raise ValueError(
            f"the green word(s) {list(train_cfg['green_words'])} do not occur in the prompt "
            f"template {train_cfg['prompt']!r}"
        )
    canvas = green_canvas(images, masks)
    weights = LossWeights(**dict(train_cfg.get("weights", {})))
    lr = float(train_cfg["lr"])
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": lr},
            {"params": list(head.parameters()), "lr": float(train_cfg.get("head_lr", lr))},
        ]
    )
    unet.train()
    head.train()
    history = TrainHistory()
    bs = min(int(train_cfg["batch_size"]), len(canvas))
    for _ in range(int(train_cfg["steps"])):
        idx = torch.randint(0, len(canvas), (bs,), generator=g)
        batch = DiffuMattingBatch(
            canvas[idx].to(device),
            masks[idx].to(device),
            embeds[idx].to(device),
            [positions[i] for i in idx.tolist()],
        )
        losses = diffumatting_step(unet, head, vae, scheduler, store, batch, weights, g)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        # Clipped apart: the UNet's noise and detail gradients would otherwise set the joint norm
        # and starve the small matting head.
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        history.steps.append({k: float(v.detach()) for k, v in losses.items()})
    unet.eval()
    head.eval()
    return history
