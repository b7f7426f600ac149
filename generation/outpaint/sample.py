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
from generation.bgaug.sample import inpainting_model_problem
from generation.bgaug.train import micro_inpainting
from generation.outpaint.model import InpaintingControlNetModel, OutpaintingPipeline
from generation.outpaint.train import ensure_micro_controlnet, train_controlnet
from generation.sd.micro import holdout_of, load_pairs
from generation.sd.parts import (
    MissingWeightsError,
    generator_parts,
    local_parts,
    pick_device,
    sampling_dtype,
)
from generation.sd.sampler import Repainter
from generation.sd.training import paper_run, train_into
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


def missing_weights(cfg: Any, prefix: str = "generator.") -> list[str]:
    """``outpaint`` reads Stable Diffusion 2 inpainting and the ControlNet trained from it by
    ``python -m generation.train generator=outpaint``; ``outpaint_micro`` trains its own parts."""
    if not cfg.get("pretrained"):
        return []
    problems = inpainting_model_problem(cfg, prefix, "the model the ControlNet steers")
    folder = Path(os.path.expanduser(str(cfg.get("controlnet") or "")))
    if not (folder / "config.json").is_file():
        problems.append(
            f"{prefix}controlnet: {folder} holds no trained outpainting ControlNet. Train it from "
            f"the inpainting model with `python -m generation.train generator={cfg.get('name')} "
            f"data=ovcamo` (OVCAMO_ROOT set), which writes it there."
        )
    return problems


def train_weights(
    cfg: Any, data: DataPaths | None, cache_dir: Any, device: Any, check: bool
) -> str:
    """Train the outpainting ControlNet from ``pretrained`` on ``data``'s train split (the
    paper's recipe: the inpainting UNet frozen) into ``controlnet``; with ``check`` only say so.
    ``data`` may be ``None`` under ``check``."""
    inpainting = inpainting_model_problem(cfg, "generator.", "the model the ControlNet steers")
    if inpainting:
        raise MissingWeightsError(inpainting[0])
    folder = Path(os.path.expanduser(str(cfg["controlnet"])))
    train_cfg, resolution = dict(cfg["train"]), int(cfg.get("resolution", 512))
    source = data.sample_info if data is not None else "the data config"
    plan = (
        f"train the outpainting ControlNet ({train_cfg['steps']} steps at {resolution} px) from "
        f"{cfg['pretrained']} on the train split of {source} into {folder}"
    )

    def make(out: Path) -> dict[str, Any]:
        run = paper_run(folder, train_cfg, device)
        parts = local_parts(cfg["pretrained"], resolution, run.device)
        pairs = load_pairs(
            data,
            resolution,
            train_cfg.get("max_samples"),
            int(train_cfg.get("seed", 0)),
            holdout_of(train_cfg),
            keep=False,
        )
        controlnet = InpaintingControlNetModel.from_inpainting_unet(parts.unet, parts.vae_scale)
        controlnet.to(parts.unet.device)
        prompts = [str(cfg["prompt"]).format(c) for c in pairs.class_names]
        torch.manual_seed(int(train_cfg.get("seed", 0)))
        history = train_controlnet(controlnet, parts, pairs, prompts, train_cfg, run)
        controlnet.save_pretrained(out)
        return history.to_json()

    return train_into(folder, (folder / "config.json").is_file(), plan, check, make)


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
        folder = Path(os.path.expanduser(str(cfg["controlnet"])))
    else:
        folder = ensure_micro_controlnet(cfg, parts, data, cache_dir)
    controlnet = InpaintingControlNetModel.from_pretrained(folder, local_files_only=True)
    return Outpainting(
        pipe=parts.pipeline(
            OutpaintingPipeline, dev, sampling_dtype(cfg, dev), controlnet=controlnet
        ),
        **Outpainting.settings(cfg, parts.resolution),
        controlnet_conditioning_scale=float(
            cfg.get("sampler", {}).get("controlnet_conditioning_scale", 1.0)
        ),
        max_object_fraction=float(cfg.get("max_object_fraction", 0.95)),
    )
