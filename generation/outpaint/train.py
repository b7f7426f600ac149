"""ControlNet training of salient-object-aware outpainting (CVPRW 2024; docs/design.md,
"Generation").

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
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from generation.bgaug.train import inpainting_input
from generation.outpaint.model import InpaintingControlNetModel
from generation.sd.micro import TrainingPairs, cached_folder, config_hash, micro_pairs
from generation.sd.parts import SDParts
from generation.sd.prompts import Captions
from generation.sd.training import RunOptions, Trainable, TrainHistory, add_noise, fit
from ovcamo.data import DataPaths

log = logging.getLogger(__name__)


def controlnet_step(
    controlnet: InpaintingControlNetModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
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
    z0, mask, masked = inpainting_input(vae, images, generate)
    noised = add_noise(scheduler, z0, generator)
    x = torch.cat([noised.zt, mask, masked], dim=1)
    down, mid = controlnet(
        x,
        noised.t,
        encoder_hidden_states=prompt_embeds,
        controlnet_cond=generate.expand(-1, 3, -1, -1),
        return_dict=False,
    )
    out = unet(
        x,
        noised.t,
        encoder_hidden_states=prompt_embeds,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    return noised.loss(out)


def train_controlnet(
    controlnet: InpaintingControlNetModel,
    parts: SDParts,
    pairs: TrainingPairs,
    prompts: list[str],
    train_cfg: Mapping[str, Any],
    run: RunOptions | None = None,
) -> TrainHistory:
    """Train ``controlnet`` (``parts.unet`` frozen) on ``pairs`` captioned by ``prompts``;
    ``train_cfg``: ``steps``, ``batch_size``, ``lr``, ``seed``, ``uncond_prob`` (prompt dropout:
    the sampler's classifier-free guidance also runs the ControlNet on the empty prompt) and the
    loop's keys (:class:`~generation.sd.training.LoopSettings`); ``run``: checkpoints, log and
    progress bar."""
    device = parts.unet.device
    captions = Captions.for_training(parts, prompts, train_cfg)
    parts.unet.eval().requires_grad_(False)
    scheduler = parts.noise_scheduler()

    def step(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        images, masks = pairs.batch(idx)
        return controlnet_step(
            controlnet,
            parts.unet,
            parts.vae,
            scheduler,
            images.to(device),
            masks.to(device),
            captions.batch(idx, g)[0],
            g,
        )

    return fit(
        [Trainable(controlnet, float(train_cfg["lr"]))],
        step,
        len(pairs),
        train_cfg,
        **(run or RunOptions()).for_stage(),
    )


def ensure_micro_controlnet(
    cfg: Mapping[str, Any],
    parts: SDParts,
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
) -> Path:
    """The ControlNet folder of an ``outpaint_micro`` config, trained from the micro inpainting
    ``parts`` on first use and cached."""
    micro, prompt, train_cfg = cfg["micro"], str(cfg["prompt"]), dict(cfg["train"])

    def make(folder: Path) -> dict[str, Any]:
        seed = int(train_cfg.get("seed", 0))
        pairs = micro_pairs(micro, data, seed)
        torch.manual_seed(seed)
        controlnet = InpaintingControlNetModel.from_inpainting_unet(parts.unet, parts.vae_scale)
        controlnet.to(parts.unet.device)
        log.info("training the micro outpainting ControlNet (%s steps)", train_cfg["steps"])
        history = train_controlnet(
            controlnet, parts, pairs, [prompt.format(c) for c in pairs.class_names], train_cfg
        )
        controlnet.save_pretrained(folder / "controlnet")
        return history.to_json()

    key = config_hash(parts.source.name, train_cfg, prompt)
    return cached_folder(cache_dir, "outpaint", key, make) / "controlnet"
