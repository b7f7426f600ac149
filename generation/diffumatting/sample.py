"""DiffuMatting sampler and builder (ECCV 2024; docs/design.md, "Generation"): class name →
green-canvas image with the stock ``StableDiffusionPipeline`` → matting head + GreenPost → RGBA
object → hidden by a background generator (classic by default, LAKE-RED selectable) → camouflaged
sample."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from omegaconf import OmegaConf

from generation.base import (
    GeneratedSample,
    Generator,
    Placement,
    SkipSample,
    SourceObject,
    build_generator,
    check_source,
    mask_box,
)
from generation.diffumatting.green_post import GreenPost
from generation.diffumatting.model import MattingHead, decoder_feature_channels, decoder_features
from generation.diffumatting.train import (
    HEAD_FILE,
    load_salient,
    salient_pairs_source,
    train_and_save,
)
from generation.sd.micro import ensure_micro_unet, file_hash, micro_pairs
from generation.sd.parts import MissingWeightsError, SDParts, generator_parts, pick_device
from generation.sd.sampler import SDSampler
from ovcamo import CONF_DIR
from ovcamo.checkpoint import load_weights
from ovcamo.data import DataPaths

#: Bumped whenever training code changes what a cached micro model would be.
TRAINER_VERSION = 3
CONF_GENERATOR_DIR = CONF_DIR / "generator"


@dataclass
class RGBAObject:
    """A generated object: RGB uint8 ``R×R×3`` (unmixed foreground), alpha float ``R×R``, the
    green-canvas image it came from and its GSG distance."""

    foreground: np.ndarray
    alpha: np.ndarray
    canvas: np.ndarray
    gsg: float


@dataclass(kw_only=True)
class DiffuMattingGenerator(SDSampler):
    """Generates a new object of ``class_name`` and hands it to ``background`` to hide.

    The source object fixes the canvas size and where the new object goes: it is scaled so its
    box matches the source object's longer box side and centred on the source object's centre.
    The sample mask is the alpha thresholded at ``alpha_threshold``, moved wherever the background
    generator places the object; the soft alpha follows the same placement.
    """

    head: MattingHead
    green_post: GreenPost
    background: Generator
    name: str = "diffumatting"
    prompt: str = "a photo of a {} on a green background"
    alpha_threshold: float = 0.5
    min_object_pixels: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def object(self, class_name: str, seed: int) -> RGBAObject:
        """Text → green-canvas image → matting head coarse mask → GreenPost RGBA."""
        latents = self.pipe(
            self.prompt.format(class_name), output_type="latent", **self.call_arguments(seed)
        ).images
        vae = self.pipe.vae
        with decoder_features(vae) as feats:
            decoded = vae.decode(latents / vae.config.scaling_factor).sample
        coarse = self.head(feats[-1]).sigmoid()[0, 0].float().cpu().numpy()
        canvas = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
        canvas = canvas.permute(1, 2, 0).cpu().numpy()
        coarse_mask = coarse > self.alpha_threshold
        if coarse_mask.sum() < self.min_object_pixels or coarse_mask.all():
            raise SkipSample(
                f"no_object: the matting head found {int(coarse_mask.sum())} object pixels "
                f"of {coarse_mask.size} for {class_name!r}"
            )
        post = self.green_post(canvas, coarse_mask)
        if not (post.alpha >= self.alpha_threshold).any():
            raise SkipSample(f"no_object: GreenPost keyed out the whole {class_name!r} object")
        return RGBAObject(post.foreground, post.alpha, canvas, post.gsg)

    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample:
        """A camouflaged sample of ``class_name`` on a canvas of the source's size."""
        check_source(source)
        obj = self.object(class_name, seed)
        image, alpha = place_like_source(obj.foreground, obj.alpha, source.mask)
        mask = alpha >= self.alpha_threshold
        if not mask.any():
            raise SkipSample("no_object: the placed object vanished at the source's scale")
        staged = SourceObject(
            np.where(mask[..., None], image, 0).astype(np.uint8), mask, class_name, source.unique_id
        )
        sample = self.background.generate(staged, class_name, seed)
        placement = sample.extra.get("placement")
        if placement is not None:
            alpha = warp_alpha(alpha, Placement.from_json(placement))
        # Resampling moves alpha and mask slightly differently; the exact mask wins, so that
        # thresholding the kept alpha gives back the written mask.
        thr = np.float32(self.alpha_threshold)
        alpha = alpha.astype(np.float32)
        alpha = np.where(
            sample.mask, np.maximum(alpha, thr), np.minimum(alpha, np.nextafter(thr, np.float32(0)))
        )
        return GeneratedSample(
            image=sample.image,
            mask=sample.mask,
            alpha=alpha,
            # The object is new, not the source's: the background generator's placement is kept
            # under its own key so quality checks do not compare it with the source object.
            extra={
                **{k: v for k, v in sample.extra.items() if k != "placement"},
                "background_placement": placement,
                "background_generator": getattr(self.background, "name", "?"),
                "gsg": round(obj.gsg, 3),
                "prompt": self.prompt.format(class_name),
                **self.extra,
            },
        )


def place_like_source(
    foreground: np.ndarray, alpha: np.ndarray, source_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Put an ``R×R`` RGBA object on a canvas the size of ``source_mask`` (``H×W``), its box
    scaled to the source object's longer box side and centred on the source object's centre.
    Returns RGB uint8 ``H×W×3`` and alpha float ``H×W``."""
    h, w = source_mask.shape
    t, left, b, r = mask_box(alpha >= 0.5)
    st, sl, sb, sr = mask_box(source_mask)
    scale = max(sb - st, sr - sl) / max(b - t, r - left)
    oh, ow = max(1, round((b - t) * scale)), max(1, round((r - left) * scale))
    oh, ow = min(oh, h), min(ow, w)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    fg = cv2.resize(foreground[t:b, left:r], (ow, oh), interpolation=interp)
    a = cv2.resize(alpha[t:b, left:r], (ow, oh), interpolation=interp)
    cy, cx = (st + sb) // 2, (sl + sr) // 2
    top = int(np.clip(cy - oh // 2, 0, h - oh))
    lft = int(np.clip(cx - ow // 2, 0, w - ow))
    image = np.zeros((h, w, 3), np.uint8)
    out_alpha = np.zeros((h, w), np.float32)
    image[top : top + oh, lft : lft + ow] = fg
    out_alpha[top : top + oh, lft : lft + ow] = np.clip(a, 0, 1)
    return image, out_alpha


def warp_alpha(alpha: np.ndarray, placement: Placement) -> np.ndarray:
    """Apply a background generator's :class:`Placement` to a soft alpha (bilinear/area resize)."""
    t, left, b, r = placement.box
    crop = alpha[t:b, left:r]
    if placement.scale != 1.0:
        hh = max(1, round((b - t) * placement.scale))
        ww = max(1, round((r - left) * placement.scale))
        interp = cv2.INTER_AREA if placement.scale < 1 else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (ww, hh), interpolation=interp)
    out = np.zeros((placement.height, placement.width), np.float32)
    hh, ww = crop.shape
    out[placement.top : placement.top + hh, placement.left : placement.left + ww] = crop
    return out


# ----------------------------------------------------------------------------- building


def background_generator(cfg: Any, **context: Any) -> Generator:
    """The background generator a DiffuMatting config names: a config name under
    ``ovcamo/conf/generator/`` (``classic``, ``lakered_micro``, ...) or a full generator node."""
    if isinstance(cfg, str):
        path = CONF_GENERATOR_DIR / f"{cfg}.yaml"
        if not path.is_file():
            raise KeyError(f"generator.background={cfg!r}: no config {path}")
        cfg = OmegaConf.load(path)
    return build_generator(cfg, **context)


def micro_diffumatting(
    cfg: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
) -> SDParts:
    """The micro DiffuMatting parts (UNet and matting head beside the shared VAE and text
    encoder), trained on the micro-world's salient set (else ``data``'s train split) on first
    use and cached."""
    micro = cfg["micro"]
    train_cfg = {**cfg["train"], "prompt": cfg["prompt"], "green_words": list(cfg["green_words"])}
    salient = salient_pairs_source(data)

    def train(parts: SDParts, folder: Path) -> dict[str, Any]:
        seed = int(train_cfg.get("seed", 0))
        if salient is not None:
            pairs = load_salient(salient, int(micro["resolution"]), micro.get("max_samples"), seed)
        else:
            pairs = micro_pairs(micro, data, seed)
        history = train_and_save(parts, pairs, train_cfg, folder)
        return {"source": "salient" if salient is not None else "train", **history.to_json()}

    source_hash = file_hash(salient if salient is not None else data.sample_info)
    spec = (dict(micro), train_cfg, source_hash, TRAINER_VERSION)
    return ensure_micro_unet(
        "diffumatting", micro, data, cache_dir, device, in_channels=4, spec=spec, train=train
    )


def build(
    cfg: Any,
    data: DataPaths | None = None,
    cache_dir: Any = None,
    device: Any = None,
    **context: Any,
) -> DiffuMattingGenerator:
    """Builder named by ``ovcamo/conf/generator/diffumatting*.yaml``.

    ``pretrained`` set: a local Stable Diffusion 1.5 folder fine-tuned with DiffuMatting's losses,
    plus ``matting_head`` (a safetensors file, by default inside that folder). ``pretrained:
    null``: the micro parts, trained on ``data`` on first use and cached.
    """
    dev = pick_device(device)
    parts = generator_parts(cfg, data, cache_dir, dev, micro_diffumatting)
    head_path = Path(os.path.expanduser(str(cfg.get("matting_head") or parts.source / HEAD_FILE)))
    if not head_path.is_file():
        raise MissingWeightsError(
            f"The DiffuMatting matting head was not found at {head_path}. It is trained with "
            f"the UNet by `python -m generation.train generator=diffumatting` (latent matting "
            f"loss) and saved as a safetensors file; set generator.matting_head to its path."
        )
    head = MattingHead(decoder_feature_channels(parts.vae))
    head.load_state_dict(load_weights(head_path))
    gp = cfg.get("green_post", {})
    background = background_generator(
        cfg.get("background", "classic"), data=data, cache_dir=cache_dir, device=device, **context
    )
    return DiffuMattingGenerator(
        pipe=parts.pipeline(StableDiffusionPipeline, dev),
        **DiffuMattingGenerator.settings(cfg, parts.resolution),
        head=head.to(dev).eval(),
        green_post=GreenPost(k=int(gp.get("k", 3)), band=int(gp.get("band", 3))),
        background=background,
        alpha_threshold=float(cfg.get("alpha_threshold", 0.5)),
    )
