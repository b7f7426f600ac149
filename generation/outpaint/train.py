"""ControlNet training step of salient-object-aware outpainting (CVPRW 2024, DESIGN §7).

The inpainting UNet is frozen; the ControlNet made from it learns, from the full inpainting input
and the inverted object mask as control image, residuals that keep the UNet from extending the
object into the background it generates. Loss: the UNet's noise-prediction MSE.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from generation.bgaug.train import ensure_micro_inpainting, inpainting_input
from generation.diffumatting.components import (
    config_hash,
    encode_prompt,
    publish_dir,
    staging_dir,
)
from generation.diffumatting.micro import SDBase, cache_root, load_pairs, micro_holdout
from generation.outpaint.model import InpaintingControlNetModel
from ovcamo.data import DataPaths
from ovcamo.data.io import atomic_write_json

log = logging.getLogger(__name__)


def controlnet_step(
    controlnet: InpaintingControlNetModel,
    unet: UNet2DConditionModel,
    base: SDBase,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    object_masks: torch.Tensor,
    prompt_embeds: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One ControlNet training step; returns the noise-prediction MSE.

    ``images`` ``B×3×H×W`` in [−1, 1], ``object_masks`` ``B×1×H×W`` (1 = object), ``prompt_embeds``
    ``B×L×D``. The region to generate and the control image are both the inverted object mask.
    """
    generate = 1 - object_masks
    z0, mask, masked = inpainting_input(base.vae, images, generate)
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=generator)
    t = t.to(z0.device)
    x = torch.cat([scheduler.add_noise(z0, noise, t), mask, masked], dim=1)
    down, mid = controlnet(
        x,
        t,
        encoder_hidden_states=prompt_embeds,
        controlnet_cond=generate.expand(-1, 3, -1, -1),
        return_dict=False,
    )
    out = unet(
        x,
        t,
        encoder_hidden_states=prompt_embeds,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    return F.mse_loss(out, noise)


def train_controlnet(
    controlnet: InpaintingControlNetModel,
    unet: UNet2DConditionModel,
    base: SDBase,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    masks: torch.Tensor,
    prompts: list[str],
    train_cfg: Mapping[str, Any],
) -> list[float]:
    """Train ``controlnet`` (``unet`` frozen) on ``images``/object ``masks``; ``train_cfg``:
    ``steps``, ``batch_size``, ``lr``, ``seed``. Returns the loss per step."""
    device = next(controlnet.parameters()).device
    g = torch.Generator().manual_seed(int(train_cfg.get("seed", 0)))
    _, embeds = encode_prompt(base.tokenizer, base.text_encoder, prompts)
    unet.eval().requires_grad_(False)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=float(train_cfg["lr"]))
    bs = min(int(train_cfg["batch_size"]), len(images))
    controlnet.train()
    losses = []
    for _ in range(int(train_cfg["steps"])):
        idx = torch.randint(0, len(images), (bs,), generator=g)
        loss = controlnet_step(
            controlnet,
            unet,
            base,
            scheduler,
            images[idx].to(device),
            masks[idx].to(device),
            embeds[idx].to(device),
            g,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    controlnet.eval().requires_grad_(False)
    return losses


def ensure_micro_outpainting(
    cfg: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
) -> tuple[SDBase, Path, Path]:
    """The micro inpainting UNet (shared with ``bgaug_micro``) and a ControlNet trained from it,
    cached. Returns the base parts, the inpainting folder and the ControlNet folder."""
    micro, prompt = cfg["micro"], str(cfg["prompt"])
    base, inpainting = ensure_micro_inpainting(
        micro, cfg["inpainting_train"], str(cfg["train_prompt"]), data, cache_dir, device
    )
    train_cfg = dict(cfg["train"])
    key = config_hash(inpainting.name, train_cfg, prompt)
    final = cache_root(cache_dir) / "outpaint" / key
    if not (final / "history.json").is_file():
        seed = int(train_cfg.get("seed", 0))
        pairs = load_pairs(
            data, int(micro["resolution"]), micro.get("max_samples"), seed, micro_holdout(micro)
        )
        unet = UNet2DConditionModel.from_pretrained(inpainting / "unet").to(device)
        torch.manual_seed(seed)
        controlnet = InpaintingControlNetModel.from_inpainting_unet(unet, base.vae_scale)
        controlnet.to(device)
        log.info("training the micro outpainting ControlNet (%s steps)", train_cfg["steps"])
        losses = train_controlnet(
            controlnet,
            unet,
            base,
            DDPMScheduler.from_pretrained(inpainting / "scheduler"),
            pairs.images,
            pairs.masks,
            [prompt.format(c) for c in pairs.class_names],
            train_cfg,
        )
        tmp = staging_dir(final)
        controlnet.save_pretrained(tmp / "controlnet")
        atomic_write_json(tmp / "history.json", {"loss": losses})
        publish_dir(tmp, final)
    return base, inpainting, final / "controlnet"
