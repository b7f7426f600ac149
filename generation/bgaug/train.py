"""Latent inpainting training step (the Stable Diffusion inpainting objective) and the micro
inpainting UNet it trains, shared by background augmentation and outpainting.

The background-augmentation paper (arXiv 2408.00350) trains nothing: it runs Stable Diffusion 2
inpainting as is. A fresh machine has no such weights, so the micro config trains a small
inpainting UNet with the same objective SD-inpainting was trained with: UNet input = [noisy latent
z_t, mask at latent size, latent of the masked image] (4 + 1 + 4 channels), target = noise. Masks
are the source's background (what both generators repaint) or a random box, half and half.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from generation.diffumatting.components import (
    config_hash,
    encode_prompt,
    file_hash,
    publish_dir,
    sd_noise_scheduler,
    staging_dir,
    tiny_unet,
)
from generation.diffumatting.micro import (
    SDBase,
    cache_root,
    ensure_sd_base,
    load_pairs,
    micro_holdout,
)
from ovcamo.data import DataPaths
from ovcamo.data.io import atomic_write_json

log = logging.getLogger(__name__)


def inpainting_input(
    vae: AutoencoderKL, images: torch.Tensor, generate: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents of an inpainting example, as ``StableDiffusionInpaintPipeline`` builds them.

    ``images``: ``B×3×H×W`` in [−1, 1]; ``generate``: ``B×1×H×W``, 1 where pixels are to be
    generated. Returns z₀ ``B×4×h×w`` (scaled), the mask resized to ``h×w`` and the scaled latent
    of the masked image (generated pixels set to 0, i.e. mid-grey).
    """
    sf = vae.config.scaling_factor
    with torch.no_grad():
        z0 = vae.encode(images).latent_dist.sample() * sf
        masked = vae.encode(images * (generate < 0.5)).latent_dist.sample() * sf
    mask_latent = F.interpolate(generate, size=z0.shape[-2:])
    return z0, mask_latent, masked


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
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=generator)
    t = t.to(z0.device)
    zt = scheduler.add_noise(z0, noise, t)
    out = unet(torch.cat([zt, mask, masked], 1), t, encoder_hidden_states=prompt_embeds).sample
    return F.mse_loss(out, noise)


def train_inpainting(
    unet: UNet2DConditionModel,
    base: SDBase,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    masks: torch.Tensor,
    prompts: list[str],
    train_cfg: Mapping[str, Any],
) -> list[float]:
    """Train ``unet`` on ``images``/``masks`` (``N×3×H×W``, object masks ``N×1×H×W``);
    ``train_cfg``: ``steps``, ``batch_size``, ``lr``, ``seed``, ``uncond_prob`` (prompt dropout,
    so classifier-free guidance has an unconditional model). Returns the loss per step."""
    device = next(unet.parameters()).device
    g = torch.Generator().manual_seed(int(train_cfg.get("seed", 0)))
    _, embeds = encode_prompt(base.tokenizer, base.text_encoder, prompts)
    _, empty = encode_prompt(base.tokenizer, base.text_encoder, [""])
    opt = torch.optim.AdamW(unet.parameters(), lr=float(train_cfg["lr"]))
    bs = min(int(train_cfg["batch_size"]), len(images))
    unet.train()
    losses = []
    for _ in range(int(train_cfg["steps"])):
        idx = torch.randint(0, len(images), (bs,), generator=g)
        x = images[idx].to(device)
        use_background = (torch.rand(bs, 1, 1, 1, generator=g) < 0.5).to(device)
        generate = torch.where(
            use_background,
            1 - masks[idx].to(device),
            random_boxes(x.shape[:1] + (1,) + x.shape[2:], g).to(device),
        )
        drop = (torch.rand(bs, 1, 1, generator=g) < float(train_cfg.get("uncond_prob", 0.1))).to(
            device
        )
        cond = torch.where(drop, empty.to(device), embeds[idx].to(device))
        loss = inpainting_step(unet, base.vae, scheduler, x, generate, cond, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    unet.eval().requires_grad_(False)
    return losses


def ensure_micro_inpainting(
    micro: Mapping[str, Any],
    train_cfg: Mapping[str, Any],
    prompt: str,
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
) -> tuple[SDBase, Path]:
    """Train (or find in the cache) the micro inpainting UNet on ``data``'s train split, with
    ``prompt`` (a template filled by each class name) as caption. Returns the shared base parts
    and the folder holding ``unet/`` and ``scheduler/``."""
    base = ensure_sd_base(micro, data, cache_dir, device)
    key = config_hash(dict(micro), dict(train_cfg), prompt, base.key, file_hash(data.sample_info))
    final = cache_root(cache_dir) / "inpainting" / key
    if not (final / "history.json").is_file():
        seed = int(train_cfg.get("seed", 0))
        res = int(micro["resolution"])
        pairs = load_pairs(data, res, micro.get("max_samples"), seed, micro_holdout(micro))
        torch.manual_seed(seed)
        unet = tiny_unet(
            {**micro["unet"], "sample_size": res // base.vae_scale},
            in_channels=9,
            cross_attention_dim=base.text_encoder.config.hidden_size,
        ).to(device)
        scheduler = sd_noise_scheduler()
        log.info("training the micro inpainting UNet (%s steps) into %s", train_cfg["steps"], final)
        losses = train_inpainting(
            unet,
            base,
            scheduler,
            pairs.images,
            pairs.masks,
            [prompt.format(c) for c in pairs.class_names],
            train_cfg,
        )
        tmp = staging_dir(final)
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        atomic_write_json(tmp / "history.json", {"loss": losses})
        publish_dir(tmp, final)
    return base, final
