"""Micro Stable Diffusion parts shared by the diffusers generators, trained on the source dataset.

A paper config loads real weights; a micro config needs a VAE and a text encoder that exist on a
fresh machine. The VAE is trained for a few hundred steps as an autoencoder on the source
dataset's train images (KL-regularised reconstruction, as Stable Diffusion's first stage); the text
encoder is a seeded, frozen small CLIP text model. Both are cached by config and data hash and
shared by DiffuMatting, background augmentation and outpainting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from generation.diffumatting.components import (
    clip_tokenizer,
    config_hash,
    file_hash,
    publish_dir,
    staging_dir,
    tiny_text_encoder,
    tiny_vae,
)
from ovcamo.data import DataPaths, holdout_split, load_sample, resolve_records

log = logging.getLogger(__name__)


@dataclass
class TrainingPairs:
    """Images ``N×3×R×R`` in [−1, 1], masks ``N×1×R×R`` in {0, 1}, and the class of each."""

    images: torch.Tensor
    masks: torch.Tensor
    class_names: list[str]


@dataclass
class SDBase:
    """The frozen parts every generator shares: VAE, text encoder and tokenizer."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    key: str

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


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


def load_pairs(
    data: DataPaths,
    resolution: int,
    max_samples: int | None = None,
    seed: int = 0,
    holdout: tuple[float, int] = (0.0, 0),
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
    images, masks, names = [], [], []
    for r in records:
        s = load_sample(r)
        images.append(to_model_space(s["image"], resolution))
        masks.append(mask_to_model_space(s["mask"], resolution))
        names.append(r.class_name)
    return TrainingPairs(torch.stack(images), torch.stack(masks), names)


def train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    kl_weight: float = 1e-6,
    seed: int = 0,
) -> list[float]:
    """Autoencoder training: L1 reconstruction + ``kl_weight``·KL. Returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    device = next(vae.parameters()).device
    vae.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=g)
        x = images[idx].to(device)
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


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    base = cache_dir or os.environ.get("OVCAMO_CACHE", "~/.cache/ovcamo")
    return Path(os.path.expanduser(str(base))) / "generation"


def micro_holdout(micro: Mapping[str, Any]) -> tuple[float, int]:
    """``(holdout_fraction, holdout_seed)`` of a ``micro`` node (0: nothing held out)."""
    return float(micro.get("holdout_fraction") or 0.0), int(micro.get("holdout_seed") or 0)


def ensure_sd_base(
    micro: Mapping[str, Any],
    data: DataPaths,
    cache_dir: str | os.PathLike | None,
    device: torch.device,
) -> SDBase:
    """Load the shared micro VAE and text encoder from the cache, training the VAE if missing.

    ``micro`` holds ``resolution``, ``vae`` (a :func:`tiny_vae` config), ``text`` (a
    :func:`tiny_text_encoder` config), ``vae_steps``, ``vae_lr``, ``batch_size``, ``max_samples``,
    ``seed`` and ``holdout_fraction``/``holdout_seed``.
    """
    spec = {
        k: micro[k]
        for k in ("resolution", "vae", "text", "vae_steps", "vae_lr", "batch_size", "max_samples")
    }
    spec["seed"] = micro.get("seed", 0)
    spec["holdout"] = micro_holdout(micro)
    key = config_hash(spec, file_hash(data.sample_info))
    final = cache_root(cache_dir) / "sd_base" / key
    if not (final / "vae" / "config.json").is_file():
        log.info("training the micro VAE (%s steps) into %s", spec["vae_steps"], final)
        torch.manual_seed(spec["seed"])
        pairs = load_pairs(
            data, int(spec["resolution"]), spec["max_samples"], spec["seed"], spec["holdout"]
        )
        vae = tiny_vae({**spec["vae"], "sample_size": spec["resolution"]}).to(device)
        losses = train_vae(
            vae,
            pairs.images,
            int(spec["vae_steps"]),
            float(spec["vae_lr"]),
            int(spec["batch_size"]),
            seed=spec["seed"],
        )
        log.info("micro VAE reconstruction L1: first %.4f, last %.4f", losses[0], losses[-1])
        with torch.no_grad():
            latents = vae.encode(pairs.images[:64].to(device)).latent_dist.mean
        # Stable Diffusion's convention: scale latents to unit variance before diffusion.
        vae.register_to_config(scaling_factor=float(1.0 / latents.std().clamp_min(1e-4)))
        tmp = staging_dir(final)
        vae.save_pretrained(tmp / "vae")
        tiny_text_encoder(spec["text"], seed=spec["seed"]).save_pretrained(tmp / "text_encoder")
        clip_tokenizer().save_pretrained(tmp / "tokenizer")
        publish_dir(tmp, final)
    vae = AutoencoderKL.from_pretrained(final / "vae").to(device).eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(final / "text_encoder").to(device).eval()
    return SDBase(vae, text_encoder.requires_grad_(False), clip_tokenizer(), key)
