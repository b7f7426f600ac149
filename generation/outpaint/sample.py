"""Salient-object-aware outpainting sampler and builder (CVPRW 2024; docs/design.md,
"Generation").

The background around a source object is generated from scratch by an inpainting UNet steered by
the outpainting ControlNet (control image = inverted object mask), through diffusers' ControlNet
inpainting pipeline; the object's pixels are pasted back, so the mask is exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from generation.base import GeneratedSample, SourceObject, check_source
from generation.bgaug.train import micro_inpainting
from generation.outpaint.model import InpaintingControlNetModel, OutpaintingPipeline
from generation.outpaint.train import ensure_micro_controlnet
from generation.sd.parts import MissingWeightsError, generator_parts, pick_device
from generation.sd.sampler import Repainter
from ovcamo.data import DataPaths


@dataclass(kw_only=True)
class Outpainting(Repainter):
    """Generates a new background around the source object; object pixels and mask unchanged."""

    name: str = "outpaint"
    prompt: str = "a photo of a {} in its natural habitat"
    controlnet_conditioning_scale: float = 1.0
    max_object_fraction: float = 0.95

    def condition(self, region_image: Image.Image) -> dict[str, Any]:
        """The ControlNet's control image: the region to generate (the inverted object mask)."""
        return {
            "control_image": region_image.convert("RGB"),
            "controlnet_conditioning_scale": self.controlnet_conditioning_scale,
        }

    @torch.no_grad()
    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample:
        """RGB uint8 ``H×W×3`` with a generated background and the source mask (bool ``H×W``)."""
        check_source(source, max_object_fraction=self.max_object_fraction)
        prompt = self.prompt.format(class_name)
        try:
            image = self.repaint(source.image, ~source.mask, prompt, seed)
        finally:
            self.pipe.controlnet.inpainting_condition = None
        return self.kept_in_place(image, source.mask, prompt=prompt)


def controlnet_folder(cfg: Any) -> Path:
    """The trained outpainting ControlNet a paper config names (``controlnet``)."""
    folder = Path(os.path.expanduser(str(cfg.get("controlnet") or "")))
    if not (folder / "config.json").is_file():
        raise MissingWeightsError(
            f"The outpainting ControlNet was not found at {folder}. It is trained from the "
            f"inpainting UNet with `python -m generation.train generator=outpaint` and saved "
            f"there; set generator.controlnet to that folder."
        )
    return folder


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
    dev = pick_device(device)
    micro = partial(micro_inpainting, train_key="inpainting_train")
    parts = generator_parts(cfg, data, cache_dir, dev, micro)
    if cfg.get("pretrained"):
        folder = controlnet_folder(cfg)
    else:
        folder = ensure_micro_controlnet(cfg, parts, data, cache_dir)
    controlnet = InpaintingControlNetModel.from_pretrained(folder, local_files_only=True)
    return Outpainting(
        pipe=parts.pipeline(OutpaintingPipeline, dev, controlnet=controlnet),
        **Outpainting.settings(cfg, parts.resolution),
        controlnet_conditioning_scale=float(
            cfg.get("sampler", {}).get("controlnet_conditioning_scale", 1.0)
        ),
        max_object_fraction=float(cfg.get("max_object_fraction", 0.95)),
    )
