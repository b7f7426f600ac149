"""Micro Stable Diffusion parts, trained on the source dataset and cached.

A paper config loads real weights; a micro config needs a VAE and a text encoder that exist on a
fresh machine. The VAE is trained as an autoencoder on the source dataset's train images
(KL-regularised L1 reconstruction, as Stable Diffusion's first stage); the text encoder is a
seeded, frozen small CLIP text model. Both are cached by config and data hash and shared by
DiffuMatting, background augmentation and outpainting, whose own micro models are cached the same
way (:func:`cached_folder`) under ``<cache>/generation/<kind>/<hash>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from generation.sd.parts import (
    SDParts,
    clip_tokenizer,
    sd_noise_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
    vae_scale,
)
from ovcamo.data import DataPaths, Record, holdout_split, load_sample, resolve_records
from ovcamo.data.io import atomic_write_json
from ovcamo.data.world import default_cache_dir, publish_dir

log = logging.getLogger(__name__)


@dataclass
class TrainingPairs:
    """Training images and object masks of one set at ``resolution``, with the class of each.

    ``sources[i]()`` reads sample ``i`` as RGB uint8 ``H×W×3`` and bool ``H×W``. With ``keep``
    (the micro sets) each sample is read once and kept in memory; without it (full-size sets,
    which do not fit) it is read again for every batch.
    """

    sources: list[Callable[[], tuple[np.ndarray, np.ndarray]]]
    class_names: list[str]
    resolution: int
    keep: bool = True
    _kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.sources)

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``3×R×R`` in [−1, 1] and mask ``1×R×R`` in {0, 1} of sample ``i``."""
        if i in self._kept:
            return self._kept[i]
        image, mask = self.sources[i]()
        pair = (to_model_space(image, self.resolution), mask_to_model_space(mask, self.resolution))
        if self.keep:
            self._kept[i] = pair
        return pair

    def batch(self, idx: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``B×3×R×R`` and masks ``B×1×R×R`` of the samples ``idx``."""
        pairs = [self.pair(int(i)) for i in idx]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


@dataclass
class SDBase:
    """The frozen parts every micro generator shares: VAE, text encoder and tokenizer."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    key: str

    @property
    def vae_scale(self) -> int:
        return vae_scale(self.vae)


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able config parts (cache keys of the micro models)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    """Content hash of one file: a dataset's ``sample_info.json`` keys the models trained on it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``<cache>/generation``, the cache as ``ovcamo.data.world.default_cache_dir`` resolves it."""
    return default_cache_dir(cache_dir) / "generation"


def write_folder(final: Path, make: Callable[[Path], Mapping[str, Any]]) -> Path:
    """Fill a fresh staging folder beside ``final`` with ``make(folder)``, which returns the
    training history, write that to ``history.json`` and publish the folder at ``final`` in one
    rename, so no reader ever sees half of it (a concurrent writer that finished first wins)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    atomic_write_json(tmp / "history.json", dict(make(tmp)))
    publish_dir(tmp, final)
    return final


def cached_folder(
    cache_dir: str | os.PathLike | None,
    kind: str,
    key: str,
    make: Callable[[Path], Mapping[str, Any]],
) -> Path:
    """``<cache>/generation/<kind>/<key>``, made by :func:`write_folder` when absent."""
    final = cache_root(cache_dir) / kind / key
    if not (final / "history.json").is_file():
        write_folder(final, make)
    return final


def to_model_space(image: np.ndarray, resolution: int) -> torch.Tensor:
    """RGB uint8 ``H×W×3`` → float ``3×R×R`` in [−1, 1] (bicubic resize)."""
    im = Image.fromarray(image).resize((resolution, resolution), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def mask_to_model_space(mask: np.ndarray, resolution: int) -> torch.Tensor:
    """Bool ``H×W`` → float ``1×R×R`` in {0, 1} (nearest resize keeps it binary)."""
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (resolution, resolution), Image.NEAREST
    )
    return torch.from_numpy(np.asarray(im) > 127).float()[None]


def _record_pair(record: Record) -> tuple[np.ndarray, np.ndarray]:
    sample = load_sample(record)
    return sample["image"], sample["mask"]


def load_pairs(
    data: DataPaths,
    resolution: int,
    max_samples: int | None = None,
    seed: int = 0,
    holdout: tuple[float, int] = (0.0, 0),
    keep: bool = True,
) -> TrainingPairs:
    """The train split of an OVCamo-format dataset at ``resolution``, a seeded subset if capped.

    ``holdout`` = ``(fraction, seed)`` of the engine's base-validation split: those samples are
    left out, so a generator never learns from images the segmenter is validated on.
    """
    records, _ = resolve_records(data, "train", check_files="none")
    records, _ = holdout_split(records, float(holdout[0]), int(holdout[1]))
    if not records:
        raise ValueError(f"no train samples found in {data.sample_info}")
    if max_samples is not None and len(records) > max_samples:
        rng = np.random.default_rng(seed)
        records = [records[i] for i in sorted(rng.choice(len(records), max_samples, replace=False))]
    return TrainingPairs(
        [partial(_record_pair, r) for r in records],
        [r.class_name for r in records],
        resolution,
        keep,
    )


def holdout_of(node: Mapping[str, Any]) -> tuple[float, int]:
    """``(holdout_fraction, holdout_seed)`` of a config node (0: nothing held out)."""
    return float(node.get("holdout_fraction") or 0.0), int(node.get("holdout_seed") or 0)


def micro_pairs(micro: Mapping[str, Any], data: DataPaths, seed: int) -> TrainingPairs:
    """The training part of ``data`` at the ``micro`` node's resolution and sample cap."""
    return load_pairs(
        data, int(micro["resolution"]), micro.get("max_samples"), seed, holdout_of(micro)
    )


#: Pure green in the model's [−1, 1] pixel space: DiffuMatting's canvas.
GREEN = torch.tensor([-1.0, 1.0, -1.0])


def green_canvas(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Recolour the background to pure green: ``x·M + green·(1 − M)``; ``B×3×H×W`` in [−1, 1]."""
    return images * masks + GREEN.to(images).view(1, 3, 1, 1) * (1 - masks)


def train_vae(
    vae: AutoencoderKL,
    pairs: TrainingPairs,
    steps: int,
    lr: float,
    batch_size: int,
    kl_weight: float = 1e-6,
    seed: int = 0,
    green_share: float = 0.0,
) -> list[float]:
    """Autoencoder training: L1 reconstruction + ``kl_weight``·KL. Returns the loss per step.

    A share ``green_share`` of the images is shown as green canvases (the object on pure green,
    :func:`green_canvas`): a VAE that learnt only the data's scenes reconstructs pure green as a
    muddy brown, and DiffuMatting paints on pure green.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    device = next(vae.parameters()).device
    vae.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(pairs), (min(batch_size, len(pairs)),), generator=g)
        images, masks = pairs.batch(idx)
        on_green = torch.rand(len(idx), 1, 1, 1, generator=g) < green_share
        x = torch.where(on_green, green_canvas(images, masks), images).to(device)
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=g).to(device) < 0.5, x, x.flip(-1))
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=None)).sample
        loss = F.l1_loss(rec, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    vae.eval().requires_grad_(False)
    return losses


def ensure_sd_base(
    micro: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
) -> SDBase:
    """Load the shared micro VAE and text encoder from the cache, training the VAE if missing.

    ``micro`` holds ``resolution``, ``vae`` (a :func:`tiny_vae` config), ``text`` (a
    :func:`tiny_text_encoder` config), ``vae_steps``, ``vae_lr``, ``batch_size``, ``max_samples``,
    ``seed``, ``holdout_fraction``/``holdout_seed`` and ``vae_green_share`` (:func:`train_vae`).
    """
    spec = {
        k: micro[k]
        for k in ("resolution", "vae", "text", "vae_steps", "vae_lr", "batch_size", "max_samples")
    }
    spec["seed"] = micro.get("seed", 0)
    spec["holdout"] = holdout_of(micro)
    spec["vae_green_share"] = float(micro.get("vae_green_share", 0.0))
    key = config_hash(spec, file_hash(data.sample_info))

    def make(folder: Path) -> dict[str, Any]:
        log.info("training the micro VAE (%s steps) into %s", spec["vae_steps"], folder)
        torch.manual_seed(spec["seed"])
        pairs = micro_pairs(micro, data, spec["seed"])
        vae = tiny_vae({**spec["vae"], "sample_size": spec["resolution"]}).to(device)
        losses = train_vae(
            vae,
            pairs,
            int(spec["vae_steps"]),
            float(spec["vae_lr"]),
            int(spec["batch_size"]),
            seed=spec["seed"],
            green_share=spec["vae_green_share"],
        )
        log.info("micro VAE reconstruction L1: first %.4f, last %.4f", losses[0], losses[-1])
        with torch.no_grad():
            images = pairs.batch(range(min(64, len(pairs))))[0]
            latents = vae.encode(images.to(device)).latent_dist.mean
        # Stable Diffusion's convention: scale latents to unit variance before diffusion.
        vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp_min(1e-4)))
        vae.save_pretrained(folder / "vae")
        tiny_text_encoder(spec["text"], seed=spec["seed"]).save_pretrained(folder / "text_encoder")
        clip_tokenizer().save_pretrained(folder / "tokenizer")
        return {"steps": [{"reconstruction": v} for v in losses]}

    final = cached_folder(cache_dir, "sd_base", key, make)
    vae = AutoencoderKL.from_pretrained(final / "vae").to(device).eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(final / "text_encoder").to(device).eval()
    return SDBase(vae, text_encoder.requires_grad_(False), clip_tokenizer(), key)


def micro_unet(micro: Mapping[str, Any], base: SDBase, in_channels: int) -> UNet2DConditionModel:
    """A fresh :func:`tiny_unet` (``micro.unet``) on the latent grid of ``base``'s VAE."""
    size = int(micro["resolution"]) // base.vae_scale
    return tiny_unet(
        {**micro["unet"], "sample_size": size}, in_channels, base.text_encoder.config.hidden_size
    )


def micro_parts(
    micro: Mapping[str, Any],
    base: SDBase,
    unet: UNet2DConditionModel,
    scheduler: Any = None,
    source: Path | None = None,
) -> SDParts:
    """``base`` with ``unet`` and ``scheduler`` (Stable Diffusion's training schedule by default)
    as one generator's parts, at ``micro.resolution``."""
    return SDParts(
        unet=unet,
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        scheduler=scheduler if scheduler is not None else sd_noise_scheduler(),
        resolution=int(micro["resolution"]),
        source=source,
    )


def load_micro_parts(
    micro: Mapping[str, Any], base: SDBase, folder: Path, device: torch.device
) -> SDParts:
    """The parts a micro trainer saved in ``folder`` (``unet/``, ``scheduler/``) over ``base``."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    return micro_parts(micro, base, unet, scheduler, source=folder)


def ensure_micro_unet(
    kind: str,
    micro: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
    *,
    in_channels: int,
    spec: Any,
    train: Callable[[SDParts, Path], Mapping[str, Any]],
) -> SDParts:
    """A generator's micro UNet over the shared base parts, cached under ``kind`` by ``spec``
    (JSON-able: everything besides the base that decides the model). On first use a fresh UNet
    (seeded by ``micro.seed``) is trained by ``train(parts, folder)``, which saves what it trained
    into ``folder`` and returns the training history."""
    base = ensure_sd_base(micro, data, cache_dir, device)

    def make(folder: Path) -> Mapping[str, Any]:
        torch.manual_seed(int(micro.get("seed", 0)))
        parts = micro_parts(micro, base, micro_unet(micro, base, in_channels).to(device))
        log.info("training the micro %s model into %s", kind, folder)
        return train(parts, folder)

    folder = cached_folder(cache_dir, kind, config_hash(spec, base.key), make)
    return load_micro_parts(micro, base, folder, device)
