"""Salient-object-aware outpainting sampler and builder (CVPRW 2024, DESIGN §7).

The background around a source object is generated from scratch by an inpainting UNet steered by
the outpainting ControlNet (control image = inverted object mask), through diffusers' ControlNet
inpainting pipeline; the object's pixels are pasted back, so the mask is exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image

from generation.base import GeneratedSample, Placement, SourceObject, check_source
from generation.diffumatting.components import MissingWeightsError, from_local, pick_device
from generation.outpaint.model import InpaintingControlNetModel, OutpaintingPipeline
from generation.outpaint.train import ensure_micro_outpainting
from ovcamo.data import DataPaths


@dataclass
class Outpainting:
    """Generates a new background around the source object; object pixels and mask unchanged."""

    pipe: OutpaintingPipeline
    name: str = "outpaint"
    resolution: int = 512
    prompt: str = "a photo of a {} in its natural habitat"
    negative_prompt: str = ""
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    controlnet_conditioning_scale: float = 1.0
    max_object_fraction: float = 0.95

    @torch.no_grad()
    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample:
        """RGB uint8 ``H×W×3`` with a generated background and the source mask (bool ``H×W``)."""
        image, mask = source.image, source.mask
        check_source(source, max_object_fraction=self.max_object_fraction)
        h, w = mask.shape
        r = self.resolution
        background = Image.fromarray((~mask).astype(np.uint8) * 255).resize((r, r), Image.NEAREST)
        out = self.pipe(
            self.prompt.format(class_name),
            negative_prompt=self.negative_prompt or None,
            image=Image.fromarray(image).resize((r, r), Image.BICUBIC),
            mask_image=background,
            control_image=background.convert("RGB"),
            height=r,
            width=r,
            strength=1.0,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            controlnet_conditioning_scale=self.controlnet_conditioning_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        self.pipe.controlnet.inpainting_condition = None
        generated = np.asarray(out.resize((w, h), Image.BICUBIC), dtype=np.uint8)
        return GeneratedSample(
            image=np.where(mask[..., None], image, generated),
            mask=mask.copy(),
            extra={
                "placement": Placement.identity(h, w).to_json(),
                "prompt": self.prompt.format(class_name),
            },
        )


def build(
    cfg: Any,
    data: DataPaths | None = None,
    cache_dir: Any = None,
    device: Any = None,
    **context: Any,
) -> Outpainting:
    """Builder named by ``ovcamo/conf/generator/outpaint*.yaml``: a local inpainting model folder
    (``pretrained``) and a trained outpainting ControlNet (``controlnet``), or the micro parts
    trained on ``data`` and cached."""
    dev = pick_device(None if device in (None, "auto") else str(device))
    if cfg.get("pretrained"):
        root = Path(os.path.expanduser(str(cfg["pretrained"])))
        parts = {k: from_local(k, root) for k in ("unet", "vae", "text_encoder", "tokenizer")}
        scheduler = DDIMScheduler.from_config(from_local("scheduler", root).config)
        cn_dir = Path(os.path.expanduser(str(cfg.get("controlnet") or "")))
        if not (cn_dir / "config.json").is_file():
            raise MissingWeightsError(
                f"The outpainting ControlNet was not found at {cn_dir}. It is trained from the "
                f"inpainting UNet with generation.outpaint.train (controlnet_step) and saved with "
                f"save_pretrained; set generator.controlnet to that folder."
            )
        controlnet = InpaintingControlNetModel.from_pretrained(cn_dir, local_files_only=True)
        resolution = int(cfg.get("resolution", 512))
    else:
        if data is None:
            raise ValueError(
                "the micro outpaint generator trains on a dataset: pass data=DataPaths"
            )
        base, inpainting, cn_dir = ensure_micro_outpainting(cfg, data, cache_dir, dev)
        parts = {
            "unet": UNet2DConditionModel.from_pretrained(inpainting / "unet"),
            "vae": base.vae,
            "text_encoder": base.text_encoder,
            "tokenizer": base.tokenizer,
        }
        scheduler = DDIMScheduler.from_pretrained(inpainting / "scheduler")
        controlnet = InpaintingControlNetModel.from_pretrained(cn_dir)
        resolution = int(cfg["micro"]["resolution"])
    pipe = OutpaintingPipeline(
        **parts,
        controlnet=controlnet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(dev)
    pipe.set_progress_bar_config(disable=True)
    sampler = cfg.get("sampler", {})
    return Outpainting(
        pipe=pipe,
        name=str(cfg.get("name", "outpaint")),
        resolution=resolution,
        prompt=str(cfg.get("prompt", Outpainting.prompt)),
        negative_prompt=str(sampler.get("negative_prompt", "")),
        num_inference_steps=int(sampler.get("num_inference_steps", 50)),
        guidance_scale=float(sampler.get("guidance_scale", 7.5)),
        controlnet_conditioning_scale=float(sampler.get("controlnet_conditioning_scale", 1.0)),
        max_object_fraction=float(cfg.get("max_object_fraction", 0.95)),
    )
