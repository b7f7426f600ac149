"""Latent inpainting training step (the Stable Diffusion inpainting objective) and the micro
inpainting UNet it trains, shared by background augmentation and outpainting.

The background-augmentation paper (arXiv 2408.00350) trains nothing: it runs Stable Diffusion 2
inpainting as is. A fresh machine has no such weights, so the micro config trains a small
inpainting UNet with the same objective SD-inpainting was trained with: UNet input = [noisy latent
z_t, mask at latent size, latent of the masked image] (4 + 1 + 4 channels), target = noise. Masks
are the source's background (what both generators repaint) or a random box, half and half.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from generation.sd.micro import TrainingPairs, ensure_micro_unet, file_hash, micro_pairs
from generation.sd.parts import SDParts
from generation.sd.prompts import Captions
from generation.sd.training import Trainable, TrainHistory, add_noise, encode_latents, fit
from ovcamo.data import DataPaths


def inpainting_input(
    vae: AutoencoderKL,
    images: torch.Tensor,
    generate: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents of an inpainting example, as ``StableDiffusionInpaintPipeline`` builds them.

    ``images``: ``B×3×H×W`` in [−1, 1]; ``generate``: ``B×1×H×W``, 1 where pixels are to be
    generated. Returns z₀ ``B×4×h×w`` (scaled), the mask resized to ``h×w`` and the scaled latent
    of the masked image (generated pixels set to 0, i.e. mid-grey).
    """
    z0 = encode_latents(vae, images, generator)
    masked = encode_latents(vae, images * (generate < 0.5), generator)
    return z0, F.interpolate(generate, size=z0.shape[-2:]), masked


def random_boxes(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``B×1×H×W`` masks, each one axis-aligned box covering 25–75 % of each side."""
    b, _, h, w = shape
    out = torch.zeros(shape)
    for i in range(b):
        bh = int(h * (0.25 + 0.5 * torch.rand(1, generator=generator)))
        bw = int(w * (0.25 + 0.5 * torch.rand(1, generator=generator)))
        t = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
        out[i, 0, t : t + bh, left : left + bw] = 1
    return out


def inpainting_step(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    generate: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise-prediction MSE of a 9-channel inpainting UNet on one batch (shapes as
    :func:`inpainting_input`; ``prompt_embeds`` ``B×L×D``)."""
    z0, mask, masked = inpainting_input(vae, images, generate)
    noised = add_noise(scheduler, z0, generator)
    x = torch.cat([noised.zt, mask, masked], 1)
    return noised.loss(unet(x, noised.t, encoder_hidden_states=prompt_embeds).sample)


def train_inpainting(
    parts: SDParts, pairs: TrainingPairs, prompts: list[str], train_cfg: Mapping[str, Any]
) -> TrainHistory:
    """Train ``parts.unet`` (9 input channels) on ``pairs``, captioned by ``prompts``;
    ``train_cfg``: ``steps``, ``batch_size``, ``lr``, ``seed``, ``uncond_prob`` (prompt dropout,
    so classifier-free guidance has an unconditional model)."""
    device = parts.unet.device
    captions = Captions.for_training(parts, prompts, train_cfg)
    scheduler = parts.noise_scheduler()

    def step(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        images, masks = pairs.batch(idx)
        use_background = torch.rand(len(idx), 1, 1, 1, generator=g) < 0.5
        generate = torch.where(use_background, 1 - masks, random_boxes(masks.shape, g))
        cond, _ = captions.batch(idx, g)
        return inpainting_step(
            parts.unet, parts.vae, scheduler, images.to(device), generate.to(device), cond, g
        )

    return fit(
        [Trainable(parts.unet, float(train_cfg["lr"]))],
        step,
        len(pairs),
        train_cfg,
    )


def micro_inpainting(
    cfg: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
    train_key: str = "train",
) -> SDParts:
    """The micro inpainting parts of a config (its ``micro``, ``train_prompt`` and, under
    ``train_key``, the UNet's training settings), trained on ``data``'s train split on first use
    and cached; ``bgaug_micro`` and ``outpaint_micro`` with the same settings share them."""
    micro, train_cfg, prompt = cfg["micro"], dict(cfg[train_key]), str(cfg["train_prompt"])

    def train(parts: SDParts, folder: Path) -> dict[str, Any]:
        pairs = micro_pairs(micro, data, int(train_cfg.get("seed", 0)))
        prompts = [prompt.format(c) for c in pairs.class_names]
        history = train_inpainting(parts, pairs, prompts, train_cfg)
        parts.save(folder, ("unet", "scheduler"))
        return history.to_json()

    spec = (dict(micro), train_cfg, prompt, file_hash(data.sample_info))
    return ensure_micro_unet(
        "inpainting", micro, data, cache_dir, device, in_channels=9, spec=spec, train=train
    )
