"""Background augmentation sampler and builder (arXiv 2408.00350; docs/design.md, "Generation").

The background of a source image is repainted by a stock ``StableDiffusionInpaintPipeline``: the
inpainting mask is the background eroded by a 7×7 minimum filter (a ring around the object is
kept), the prompt is "Generate a clean background", the strength adapts to the background's share
of the image, ``strength = 1 − D·(background area ratio)``, and every pixel outside the repainted
region — the object and its ring — is pasted back from the source, so the mask stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline
from scipy.ndimage import minimum_filter

from generation.base import GeneratedSample, SkipSample, SourceObject, check_source
from generation.bgaug.train import micro_inpainting
from generation.sd.parts import (
    MissingWeightsError,
    download_hint,
    generator_parts,
    pick_device,
    sampling_dtype,
    sd_folder_problem,
)
from generation.sd.sampler import Repainter
from ovcamo.data import DataPaths

#: The inpainting model the paper runs, on the Hugging Face hub.
SD2_INPAINTING = "stabilityai/stable-diffusion-2-inpainting"


def inpainting_model_problem(cfg: Any, prefix: str, role: str) -> list[str]:
    """The paragraph naming a missing Stable Diffusion 2 inpainting folder (``pretrained``),
    which the generator uses as ``role``; none when it is in place."""
    folder = cfg["pretrained"]
    hint = download_hint(SD2_INPAINTING, folder, str(cfg.get("name")))
    problem = sd_folder_problem(f"{prefix}pretrained", folder, f"{SD2_INPAINTING} ({role})", hint)
    return [problem] if problem else []


def missing_weights(cfg: Any, prefix: str = "generator.") -> list[str]:
    """``bgaug`` reads Stable Diffusion 2 inpainting and trains nothing; ``bgaug_micro`` trains
    its own parts."""
    if not cfg.get("pretrained"):
        return []
    return inpainting_model_problem(cfg, prefix, "run as the paper runs it: nothing is trained")


def train_weights(
    cfg: Any, data: DataPaths | None, cache_dir: Any, device: Any, check: bool
) -> str:
    """Nothing to train: background augmentation runs Stable Diffusion 2 inpainting as is."""
    problems = missing_weights(cfg)
    if problems:
        raise MissingWeightsError(problems[0])
    return "nothing to train: background augmentation runs Stable Diffusion 2 inpainting as is"


@dataclass(kw_only=True)
class BackgroundAugmentation(Repainter):
    """Repaints the background of a source sample; the object and its mask are unchanged."""

    name: str = "bgaug"
    prompt: str = "Generate a clean background"
    strength_d: float = 0.5
    min_strength: float = 0.3
    erosion: int = 7
    copies: int = 1

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
        check_source(source)
        region = self.inpaint_region(source.mask)
        if not region.any():
            raise SkipSample("object_fills_image: no background left after the 7×7 erosion")
        strength = self.strength(source.mask)
        image = self.repaint(source.image, region, self.prompt, seed, strength)
        return self.kept_in_place(
            image, source.mask, strength=round(strength, 4), prompt=self.prompt
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
    dev = pick_device(device)
    parts = generator_parts(cfg, data, cache_dir, dev, micro_inpainting)
    if parts.unet.config.in_channels != 9:
        raise ValueError(
            f"generator {cfg.get('name')!r} needs an inpainting UNet (9 input channels), "
            f"got {parts.unet.config.in_channels}: point `pretrained` at an inpainting model"
        )
    return BackgroundAugmentation(
        pipe=parts.pipeline(StableDiffusionInpaintPipeline, dev, sampling_dtype(cfg, dev)),
        **BackgroundAugmentation.settings(cfg, parts.resolution),
        strength_d=float(cfg.get("strength_d", 0.5)),
        min_strength=float(cfg.get("min_strength", 0.3)),
        erosion=int(cfg.get("erosion", 7)),
        copies=int(cfg.get("copies", 1)),
    )
