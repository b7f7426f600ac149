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
from generation.base import missing_weights as background_missing_weights
from generation.diffumatting.green_post import GreenPost, largest_region
from generation.diffumatting.model import MattingHead, decoder_feature_channels, decoder_features
from generation.diffumatting.train import (
    HEAD_FILE,
    diffumatting_pairs,
    salient_pairs_source,
    train_and_save,
)
from generation.sd.micro import ensure_micro_unet, file_hash, holdout_of
from generation.sd.parts import (
    SD_SUBFOLDERS,
    MissingWeightsError,
    SDParts,
    download_hint,
    generator_parts,
    local_parts,
    missing_parts,
    pick_device,
    sampling_dtype,
    sd_folder_problem,
)
from generation.sd.sampler import SDSampler
from generation.sd.training import paper_run, train_into
from ovcamo import CONF_DIR
from ovcamo.checkpoint import load_weights
from ovcamo.data import DataPaths

#: Bumped whenever training code changes what a cached micro model would be.
TRAINER_VERSION = 4
CONF_GENERATOR_DIR = CONF_DIR / "generator"


@dataclass
class RGBAObject:
    """A generated object: RGB uint8 ``R×R×3`` (unmixed foreground), alpha float ``R×R``, the
    green-canvas image it came from, its GSG distance and how many separate regions the matting
    head's coarse mask had."""

    foreground: np.ndarray
    alpha: np.ndarray
    canvas: np.ndarray
    gsg: float
    coarse_regions: int = 1


@dataclass(kw_only=True)
class DiffuMattingGenerator(SDSampler):
    """Generates a new object of ``class_name`` and hands it to ``background`` to hide.

    The source object fixes the canvas size and where the new object goes: it is scaled so its
    box matches the source object's longer box side and centred on the source object's centre.
    The sample mask is the alpha thresholded at ``alpha_threshold``, moved wherever the background
    generator places the object; the soft alpha follows the same placement. With
    ``single_object`` the matting head's coarse mask is cut to its largest region before matting,
    so a second blob the UNet drew is keyed out as background (the count of regions is kept in
    the sample's ``coarse_regions``).
    """

    head: MattingHead
    green_post: GreenPost
    background: Generator
    name: str = "diffumatting"
    prompt: str = "a photo of a {} on a green background"
    alpha_threshold: float = 0.5
    min_object_pixels: int = 16
    single_object: bool = False
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
        largest, regions = largest_region(coarse_mask)
        if self.single_object:
            coarse_mask = largest
        if coarse_mask.sum() < self.min_object_pixels or coarse_mask.all():
            raise SkipSample(
                f"no_object: the matting head found {int(coarse_mask.sum())} object pixels "
                f"of {coarse_mask.size} for {class_name!r}"
            )
        post = self.green_post(canvas, coarse_mask)
        if not (post.alpha >= self.alpha_threshold).any():
            raise SkipSample(f"no_object: GreenPost keyed out the whole {class_name!r} object")
        return RGBAObject(post.foreground, post.alpha, canvas, post.gsg, regions)

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
                "coarse_regions": obj.coarse_regions,
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


#: The model the paper fine-tunes, on the Hugging Face hub.
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def background_config(cfg: Any, prefix: str = "generator.") -> tuple[Any, str]:
    """The config node of the background generator a DiffuMatting config names (a config name
    under ``ovcamo/conf/generator/``, e.g. ``classic`` or ``lakered_micro``, or a full node), and
    the prefix its keys are reported under."""
    background = cfg.get("background", "classic")
    if not isinstance(background, str):
        return background, f"{prefix}background."
    path = CONF_GENERATOR_DIR / f"{background}.yaml"
    if not path.is_file():
        raise KeyError(f"{prefix}background={background!r}: no config {path}")
    # A generator node reads the data config's base-validation split (data.holdout_*); a node
    # loaded on its own has none, and the classic generator would then quilt each staged source's
    # own background, which DiffuMatting leaves black. It gets the split DiffuMatting was given.
    fraction, seed = holdout_of(cfg.get("micro") or cfg.get("train") or {})
    context = OmegaConf.create(
        {"data": {"holdout_fraction": fraction, "holdout_seed": seed}, "node": OmegaConf.load(path)}
    )
    return context.node, f"{prefix}background={background}: "


def training_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train`` node with the prompt template and green words training needs."""
    return {**cfg["train"], "prompt": cfg["prompt"], "green_words": list(cfg["green_words"])}


def base_model_problem(cfg: Any, prefix: str) -> str | None:
    """The paragraph naming a missing ``base_model`` (the Stable Diffusion 1.5 to fine-tune)."""
    base = cfg.get("base_model")
    holds = f"{SD15}, the model DiffuMatting fine-tunes"
    if not base:
        return f"{prefix}base_model is not set: point it at a local copy of {holds}."
    return sd_folder_problem(
        f"{prefix}base_model", base, holds, download_hint(SD15, base, str(cfg.get("name")))
    )


def missing_weights(cfg: Any, prefix: str = "generator.") -> list[str]:
    """``diffumatting`` reads Stable Diffusion 1.5 fine-tuned with DiffuMatting's losses and its
    matting head, which ``python -m generation.train generator=diffumatting`` makes from
    ``base_model``; ``diffumatting_micro`` trains its own parts. Both also need what their
    background generator reads."""
    problems = []
    if cfg.get("pretrained"):
        folder = Path(os.path.expanduser(str(cfg["pretrained"])))
        head = Path(os.path.expanduser(str(cfg.get("matting_head") or folder / HEAD_FILE)))
        make = (
            f"Make it with `python -m generation.train generator={cfg.get('name')} data=ovcamo` "
            f"(OVCAMO_ROOT set), which fine-tunes {prefix}base_model with DiffuMatting's losses "
            f"in the paper's two stages and writes the folder and its {HEAD_FILE} there."
        )
        holds = "Stable Diffusion 1.5 fine-tuned with DiffuMatting's losses"
        own = sd_folder_problem(f"{prefix}pretrained", folder, holds, make)
        if own is None and not head.is_file():
            own = (
                f"{prefix}matting_head: {head} does not exist; it is the latent matting head, "
                f"trained together with the UNet. {make}"
            )
        if own is not None:
            problems += [own, *filter(None, [base_model_problem(cfg, prefix)])]
    node, where = background_config(cfg, prefix)
    return problems + background_missing_weights(node, where)


def train_weights(
    cfg: Any, data: DataPaths | None, cache_dir: Any, device: Any, check: bool
) -> str:
    """Fine-tune ``base_model`` with DiffuMatting's losses in the paper's two stages on
    :func:`diffumatting_pairs` of ``data`` into ``pretrained``, matting head included; with
    ``check`` only say so (``data`` may then be ``None``)."""
    problem = base_model_problem(cfg, "generator.")
    if problem is not None:
        raise MissingWeightsError(problem)
    folder = Path(os.path.expanduser(str(cfg["pretrained"])))
    train_cfg, resolution = training_config(cfg), int(cfg.get("resolution", 512))
    source = data.sample_info.parent if data is not None else "the data config's set"
    plan = (
        f"fine-tune {cfg['base_model']} with DiffuMatting's losses (stages "
        f"{dict(train_cfg['stages'])}) at {resolution} px on {source} into {folder}, with its "
        f"{HEAD_FILE}"
    )

    def make(out: Path) -> dict[str, Any]:
        run = paper_run(folder, train_cfg, device)
        parts = local_parts(cfg["base_model"], resolution, run.device)
        seed = int(train_cfg.get("seed", 0))
        pairs = diffumatting_pairs(data, resolution, train_cfg, seed, keep=False)
        return train_and_save(parts, pairs, train_cfg, out, tuple(SD_SUBFOLDERS), run).to_json()

    present = not missing_parts(folder) and (folder / HEAD_FILE).is_file()
    return train_into(folder, present, plan, check, make)


def micro_diffumatting(
    cfg: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
) -> SDParts:
    """The micro DiffuMatting parts (UNet and matting head beside the shared VAE and text
    encoder), trained on :func:`diffumatting_pairs` of ``data`` on first use and cached."""
    micro, train_cfg = cfg["micro"], training_config(cfg)
    salient = salient_pairs_source(data)

    def train(parts: SDParts, folder: Path) -> dict[str, Any]:
        seed = int(train_cfg.get("seed", 0))
        pairs = diffumatting_pairs(data, int(micro["resolution"]), micro, seed)
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
    head = MattingHead(decoder_feature_channels(parts.vae))
    head.load_state_dict(load_weights(head_path))
    gp = cfg.get("green_post", {})
    background_cfg, _ = background_config(cfg)
    background = build_generator(
        background_cfg, data=data, cache_dir=cache_dir, device=device, **context
    )
    return DiffuMattingGenerator(
        pipe=parts.pipeline(StableDiffusionPipeline, dev, sampling_dtype(cfg, dev)),
        **DiffuMattingGenerator.settings(cfg, parts.resolution),
        head=head.to(dev, sampling_dtype(cfg, dev)).eval(),
        green_post=GreenPost(
            k=int(gp.get("k", 3)),
            band=int(gp.get("band", 3)),
            attached=float(cfg.get("alpha_threshold", 0.5)) if gp.get("attached") else None,
        ),
        background=background,
        alpha_threshold=float(cfg.get("alpha_threshold", 0.5)),
        single_object=bool(cfg.get("single_object", False)),
    )
