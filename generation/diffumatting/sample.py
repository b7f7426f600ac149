"""DiffuMatting sampler and builder (ECCV 2024, DESIGN §7): class name → green-canvas image with
the stock ``StableDiffusionPipeline`` → matting head + GreenPost → RGBA object → hidden by a
background generator (classic by default, LAKE-RED selectable) → camouflaged sample."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
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
from generation.diffumatting.components import (
    MissingWeightsError,
    config_hash,
    file_hash,
    from_local,
    pick_device,
    publish_dir,
    sd_noise_scheduler,
    staging_dir,
    tiny_unet,
)
from generation.diffumatting.green_post import GreenPost
from generation.diffumatting.micro import (
    SDBase,
    cache_root,
    ensure_sd_base,
    load_pairs,
    mask_to_model_space,
    micro_holdout,
    to_model_space,
)
from generation.diffumatting.model import (
    MattingHead,
    decoder_feature_channels,
    decoder_features,
    install_green_probe,
)
from generation.diffumatting.train import train_diffumatting
from ovcamo import CONF_DIR
from ovcamo.checkpoint import load_weights, save_weights
from ovcamo.data import DataPaths
from ovcamo.data.io import atomic_write_json, read_image, read_mask, safe_join

log = logging.getLogger(__name__)

#: Bumped whenever training code changes what a cached micro model would be.
TRAINER_VERSION = 2
CONF_GENERATOR_DIR = CONF_DIR / "generator"


@dataclass
class RGBAObject:
    """A generated object: RGB uint8 ``R×R×3`` (unmixed foreground), alpha float ``R×R``, the
    green-canvas image it came from and its GSG distance."""

    foreground: np.ndarray
    alpha: np.ndarray
    canvas: np.ndarray
    gsg: float


@dataclass
class DiffuMattingGenerator:
    """Generates a new object of ``class_name`` and hands it to ``background`` to hide.

    The source object fixes the canvas size and where the new object goes: it is scaled so its
    box matches the source object's longer box side and centred on the source object's centre.
    The sample mask is the alpha thresholded at ``alpha_threshold``, moved wherever the background
    generator places the object; the soft alpha follows the same placement.
    """

    pipe: StableDiffusionPipeline
    head: MattingHead
    green_post: GreenPost
    background: Generator
    name: str = "diffumatting"
    resolution: int = 512
    prompt: str = "a photo of a {} on a green background"
    negative_prompt: str = ""
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    alpha_threshold: float = 0.5
    min_object_pixels: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def object(self, class_name: str, seed: int) -> RGBAObject:
        """Text → green-canvas image → matting head coarse mask → GreenPost RGBA."""
        device = self.pipe.device
        g = torch.Generator("cpu").manual_seed(seed)
        latents = self.pipe(
            self.prompt.format(class_name),
            negative_prompt=self.negative_prompt or None,
            height=self.resolution,
            width=self.resolution,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=g,
            output_type="latent",
        ).images
        vae = self.pipe.vae
        with decoder_features(vae) as feats:
            decoded = vae.decode(latents.to(device) / vae.config.scaling_factor).sample
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


def salient_pairs_source(data: DataPaths) -> Path | None:
    """The captioned salient set a micro-world writes beside its ``class_info.json``, if any."""
    paths_json = data.class_info.parent / "paths.json"
    if not paths_json.is_file():
        return None
    rel = json.loads(paths_json.read_text("utf-8")).get("salient_captions")
    if not rel:
        return None
    path = safe_join(paths_json.parent, rel)
    return path if path.is_file() else None


def load_salient(captions: Path, resolution: int, max_samples: int | None, seed: int):
    """The ``train`` entries of a micro-world's ``salient/captions.json`` (plain backgrounds)."""
    from generation.diffumatting.micro import TrainingPairs

    entries = [
        e for e in json.loads(captions.read_text("utf-8")) if e.get("split", "train") == "train"
    ]
    if max_samples is not None and len(entries) > max_samples:
        rng = np.random.default_rng(seed)
        entries = [entries[i] for i in sorted(rng.choice(len(entries), max_samples, replace=False))]
    root = captions.parent
    images = [to_model_space(read_image(safe_join(root, e["image"])), resolution) for e in entries]
    masks = [
        mask_to_model_space(read_mask(safe_join(root, e["mask"])), resolution) for e in entries
    ]
    return TrainingPairs(
        torch.stack(images), torch.stack(masks), [e["class_name"] for e in entries]
    )


def ensure_micro_diffumatting(
    cfg: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
) -> tuple[SDBase, Path]:
    """Train (or find in the cache) the micro DiffuMatting UNet and matting head; returns the
    shared base parts and the folder holding ``unet/``, ``scheduler/`` and ``matting_head``."""
    micro = dict(cfg["micro"])
    train = {**cfg["train"], "prompt": cfg["prompt"], "green_words": list(cfg["green_words"])}
    base = ensure_sd_base(micro, data, cache_dir, device)
    salient = salient_pairs_source(data)
    source_hash = file_hash(salient if salient is not None else data.sample_info)
    key = config_hash(micro, train, base.key, source_hash, TRAINER_VERSION)
    final = cache_root(cache_dir) / "diffumatting" / key
    if not (final / "history.json").is_file():
        seed = int(train.get("seed", 0))
        res = int(micro["resolution"])
        if salient is not None:
            pairs = load_salient(salient, res, micro.get("max_samples"), seed)
        else:
            pairs = load_pairs(data, res, micro.get("max_samples"), seed, micro_holdout(micro))
        torch.manual_seed(seed)
        unet = tiny_unet(
            {**micro["unet"], "sample_size": res // base.vae_scale},
            4,
            base.text_encoder.config.hidden_size,
        ).to(device)
        store = install_green_probe(unet)
        head = MattingHead(decoder_feature_channels(base.vae)).to(device)
        scheduler = sd_noise_scheduler()
        log.info("training micro DiffuMatting (%s steps) into %s", train["steps"], final)
        history = train_diffumatting(
            unet,
            head,
            base.vae,
            base.text_encoder,
            base.tokenizer,
            scheduler,
            store,
            pairs.images,
            pairs.masks,
            pairs.class_names,
            train,
        )
        tmp = staging_dir(final)
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
        save_weights(tmp / "matting_head.safetensors", head.state_dict())
        atomic_write_json(
            tmp / "history.json",
            {"source": "salient" if salient is not None else "train", "steps": history.steps},
        )
        publish_dir(tmp, final)
    return base, final


def build(
    cfg: Any,
    data: DataPaths | None = None,
    cache_dir: Any = None,
    device: Any = None,
    **context: Any,
) -> DiffuMattingGenerator:
    """Builder named by ``ovcamo/conf/generator/diffumatting*.yaml``.

    ``pretrained`` set: a local Stable Diffusion 1.5 folder fine-tuned with DiffuMatting's losses,
    plus ``matting_head`` (a safetensors file). ``pretrained: null``: the micro parts, trained on
    ``data`` on first use and cached.
    """
    dev = pick_device(None if device in (None, "auto") else str(device))
    if cfg.get("pretrained"):
        root = Path(os.path.expanduser(str(cfg["pretrained"])))
        parts = {k: from_local(k, root) for k in ("unet", "vae", "text_encoder", "tokenizer")}
        scheduler = DDIMScheduler.from_config(from_local("scheduler", root).config)
        head_path = Path(
            os.path.expanduser(str(cfg.get("matting_head") or root / "matting_head.safetensors"))
        )
        if not head_path.is_file():
            raise MissingWeightsError(
                f"The DiffuMatting matting head was not found at {head_path}. It is trained with "
                f"the UNet by generation.diffumatting.train (latent matting loss) and saved as a "
                f"safetensors file; set generator.matting_head to its path."
            )
        vae = parts["vae"]
        head_state = load_weights(head_path)
        resolution = int(cfg.get("resolution", 512))
    else:
        if data is None:
            raise ValueError(
                "the micro DiffuMatting generator trains on a dataset: pass data=DataPaths"
            )
        base, folder = ensure_micro_diffumatting(cfg, data, cache_dir, dev)
        parts = {
            "unet": UNet2DConditionModel.from_pretrained(folder / "unet"),
            "vae": base.vae,
            "text_encoder": base.text_encoder,
            "tokenizer": base.tokenizer,
        }
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        vae = base.vae
        head_state = load_weights(folder / "matting_head.safetensors")
        resolution = int(cfg["micro"]["resolution"])
    head = MattingHead(decoder_feature_channels(vae))
    head.load_state_dict(head_state)
    pipe = StableDiffusionPipeline(
        **parts,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(dev)
    pipe.set_progress_bar_config(disable=True)
    gp = cfg.get("green_post", {})
    sampler = cfg.get("sampler", {})
    background = background_generator(
        cfg.get("background", "classic"), data=data, cache_dir=cache_dir, device=device, **context
    )
    return DiffuMattingGenerator(
        pipe=pipe,
        head=head.to(dev).eval(),
        green_post=GreenPost(k=int(gp.get("k", 3)), band=int(gp.get("band", 3))),
        background=background,
        name=str(cfg.get("name", "diffumatting")),
        resolution=resolution,
        prompt=str(cfg.get("prompt", DiffuMattingGenerator.prompt)),
        negative_prompt=str(sampler.get("negative_prompt", "")),
        num_inference_steps=int(sampler.get("num_inference_steps", 50)),
        guidance_scale=float(sampler.get("guidance_scale", 7.5)),
        alpha_threshold=float(cfg.get("alpha_threshold", 0.5)),
    )
