"""Background augmentation sampler and builder (arXiv 2408.00350, DESIGN §7).

The background of a source image is repainted by a stock ``StableDiffusionInpaintPipeline``: the
inpainting mask is the background eroded by a 7×7 minimum filter (a ring around the object is
kept), the prompt is "Generate a clean background", the strength adapts to the background's share
of the image, ``strength = 1 − D·(background area ratio)``, and every pixel outside the repainted
region — the object and its ring — is pasted back from the source, so the mask stays exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from PIL import Image
from scipy.ndimage import minimum_filter

from generation.base import GeneratedSample, Placement, SkipSample, SourceObject, check_source
from generation.bgaug.train import ensure_micro_inpainting
from generation.diffumatting.components import from_local, pick_device
from ovcamo.data import DataPaths


@dataclass
class BackgroundAugmentation:
    """Repaints the background of a source sample; the object and its mask are unchanged."""

    pipe: StableDiffusionInpaintPipeline
    name: str = "bgaug"
    resolution: int = 512
    prompt: str = "Generate a clean background"
    negative_prompt: str = ""
    strength_d: float = 0.5
    min_strength: float = 0.3
    erosion: int = 7
    copies: int = 1
    num_inference_steps: int = 50
    guidance_scale: float = 7.5

    def inpaint_region(self, mask: np.ndarray) -> np.ndarray:
        """Bool ``H×W``: the background eroded with an ``erosion×erosion`` minimum filter."""
        return minimum_filter(~mask, size=self.erosion, mode="nearest")

    def strength(self, mask: np.ndarray) -> float:
        """``1 − D·(background area / image area)``, kept in ``[min_strength, 1]``."""
        ratio = float((~mask).mean())
        return float(np.clip(1.0 - self.strength_d * ratio, self.min_strength, 1.0))

    @torch.no_grad()
    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample:
        """One augmented copy: RGB uint8 ``H×W×3`` and the source mask (bool ``H×W``)."""
        image, mask = source.image, source.mask
        check_source(source)
        region = self.inpaint_region(mask)
        if not region.any():
            raise SkipSample("object_fills_image: no background left after the 7×7 erosion")
        h, w = mask.shape
        r = self.resolution
        strength = self.strength(mask)
        out = self.pipe(
            self.prompt,
            negative_prompt=self.negative_prompt or None,
            image=Image.fromarray(image).resize((r, r), Image.BICUBIC),
            mask_image=Image.fromarray(region.astype(np.uint8) * 255).resize((r, r), Image.NEAREST),
            height=r,
            width=r,
            strength=strength,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        repainted = np.asarray(out.resize((w, h), Image.BICUBIC), dtype=np.uint8)
        result = np.where(region[..., None], repainted, image)
        return GeneratedSample(
            image=result,
            mask=mask.copy(),
            extra={
                "placement": Placement.identity(h, w).to_json(),
                "strength": round(strength, 4),
                "prompt": self.prompt,
            },
        )

    def generate_copies(
        self, source: SourceObject, class_name: str, seed: int
    ) -> list[GeneratedSample]:
        """``copies`` augmented versions of one source, seeds ``seed, seed + 1, …``."""
        return [self.generate(source, class_name, seed + i) for i in range(self.copies)]


def build(
    cfg: Any,
    data: DataPaths | None = None,
    cache_dir: Any = None,
    device: Any = None,
    **context: Any,
) -> BackgroundAugmentation:
    """Builder named by ``ovcamo/conf/generator/bgaug*.yaml``: a local Stable Diffusion 2 inpainting
    folder (``pretrained``), or the micro inpainting parts trained on ``data`` and cached."""
    dev = pick_device(None if device in (None, "auto") else str(device))
    if cfg.get("pretrained"):
        root = Path(os.path.expanduser(str(cfg["pretrained"])))
        parts = {k: from_local(k, root) for k in ("unet", "vae", "text_encoder", "tokenizer")}
        scheduler = DDIMScheduler.from_config(from_local("scheduler", root).config)
        resolution = int(cfg.get("resolution", 512))
    else:
        if data is None:
            raise ValueError("the micro bgaug generator trains on a dataset: pass data=DataPaths")
        micro = cfg["micro"]
        base, folder = ensure_micro_inpainting(
            micro, cfg["train"], str(cfg["train_prompt"]), data, cache_dir, dev
        )
        parts = {
            "unet": UNet2DConditionModel.from_pretrained(folder / "unet"),
            "vae": base.vae,
            "text_encoder": base.text_encoder,
            "tokenizer": base.tokenizer,
        }
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        resolution = int(micro["resolution"])
    if parts["unet"].config.in_channels != 9:
        raise ValueError(
            f"generator {cfg.get('name')!r} needs an inpainting UNet (9 input channels), "
            f"got {parts['unet'].config.in_channels}: point `pretrained` at an inpainting model"
        )
    pipe = StableDiffusionInpaintPipeline(
        **parts,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(dev)
    pipe.set_progress_bar_config(disable=True)
    sampler = cfg.get("sampler", {})
    return BackgroundAugmentation(
        pipe=pipe,
        name=str(cfg.get("name", "bgaug")),
        resolution=resolution,
        prompt=str(cfg.get("prompt", BackgroundAugmentation.prompt)),
        negative_prompt=str(sampler.get("negative_prompt", "")),
        strength_d=float(cfg.get("strength_d", 0.5)),
        min_strength=float(cfg.get("min_strength", 0.3)),
        erosion=int(cfg.get("erosion", 7)),
        copies=int(cfg.get("copies", 1)),
        num_inference_steps=int(sampler.get("num_inference_steps", 50)),
        guidance_scale=float(sampler.get("guidance_scale", 7.5)),
    )
