"""What every Stable Diffusion sampler of the toolkit shares: its settings and the arguments of a
stock pipeline call, and, for the generators that repaint part of a source image (background
augmentation, outpainting), the inpainting call at the model's resolution and the paste-back that
keeps every other pixel, and so the mask, exact."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from generation.base import GeneratedSample, Placement


@dataclass(kw_only=True)
class SDSampler:
    """A stock diffusers pipeline and the settings of its calls."""

    pipe: Any
    name: str = "sd"
    resolution: int = 512
    prompt: str = ""
    negative_prompt: str = ""
    num_inference_steps: int = 50
    guidance_scale: float = 7.5

    @classmethod
    def settings(cls, cfg: Mapping[str, Any], resolution: int) -> dict[str, Any]:
        """The shared fields from a generator config (``name``, ``prompt``, ``sampler.*``)."""
        sampler = cfg.get("sampler", {})
        return {
            "name": str(cfg.get("name", cls.name)),
            "resolution": int(resolution),
            "prompt": str(cfg.get("prompt", cls.prompt)),
            "negative_prompt": str(sampler.get("negative_prompt", "")),
            "num_inference_steps": int(sampler.get("num_inference_steps", 50)),
            "guidance_scale": float(sampler.get("guidance_scale", 7.5)),
        }

    def call_arguments(self, seed: int) -> dict[str, Any]:
        """Keyword arguments of one pipeline call: size, steps, guidance and a seeded generator."""
        r = self.resolution
        return {
            "negative_prompt": self.negative_prompt or None,
            "height": r,
            "width": r,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "generator": torch.Generator("cpu").manual_seed(seed),
        }


@dataclass(kw_only=True)
class Repainter(SDSampler):
    """An inpainting pipeline that regenerates one region of a source image."""

    def condition(self, region_image: Image.Image) -> dict[str, Any]:
        """Pipeline inputs beyond image and mask (a ControlNet's control image); none here.
        ``region_image``: the region to generate, white, at the model's resolution."""
        return {}

    def repaint(
        self, image: np.ndarray, region: np.ndarray, prompt: str, seed: int, strength: float = 1.0
    ) -> np.ndarray:
        """``image`` (RGB uint8 ``H×W×3``) with the pixels of ``region`` (bool ``H×W``)
        generated at the model's resolution and resized back; every other pixel is the source's."""
        h, w = region.shape
        r = self.resolution
        region_image = Image.fromarray(region.astype(np.uint8) * 255).resize((r, r), Image.NEAREST)
        out = self.pipe(
            prompt,
            image=Image.fromarray(image).resize((r, r), Image.BICUBIC),
            mask_image=region_image,
            strength=strength,
            **self.condition(region_image),
            **self.call_arguments(seed),
        ).images[0]
        generated = np.asarray(out.resize((w, h), Image.BICUBIC), dtype=np.uint8)
        return np.where(region[..., None], generated, image)

    @staticmethod
    def kept_in_place(image: np.ndarray, mask: np.ndarray, **extra: Any) -> GeneratedSample:
        """A sample whose object stayed where the source had it (identity placement)."""
        return GeneratedSample(
            image=image,
            mask=mask.copy(),
            extra={"placement": Placement.identity(*mask.shape).to_json(), **extra},
        )
