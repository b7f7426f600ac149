"""Training LAKE-RED (CVPR 2024, §3.4): diffusion loss plus background reconstruction loss, with
atomic checkpoints and exact resume (weights, optimiser, RNG, step; the batch of step ``i`` is
drawn from a generator seeded with ``i``, so the data position resumes too).

Two stages: the VQ first stage (reconstruction + commitment; the official model starts from the
pretrained LDM VQ-f4 and skips it) and the LAKE-RED stage (first stage frozen).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image

from generation.lakered.model import LakeRed, LakeRedConfig, background_reconstruction_loss
from ovcamo.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint
from ovcamo.data import DataPaths, holdout_split, load_sample, resolve_records

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """``ovcamo/conf/generator/lakered*.yaml`` ``train`` node."""

    first_stage_steps: int = 0
    first_stage_lr: float = 1e-3
    steps: int = 1000
    lr: float = 1e-4
    batch_size: int = 8
    rec_weight: float = 1.0
    loss_type: str = "l1"
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    checkpoint_every: int = 200
    seed: int = 0
    holdout_fraction: float = 0.0
    holdout_seed: int = 0
    max_images: int | None = None

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def noise_scheduler(train: TrainConfig) -> DDPMScheduler:
    """LDM's training noise schedule (``scaled_linear`` 0.0015 → 0.0205 over 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=train.num_train_timesteps,
        beta_schedule=train.beta_schedule,
        beta_start=train.beta_start,
        beta_end=train.beta_end,
        clip_sample=False,
    )


def load_training_images(
    paths: DataPaths, resolution: int, train: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split's training part (held-out part removed) as tensors.

    Returns images ``N×3×R×R`` in [−1, 1] and object masks ``N×1×R×R`` in {0, 1}; samples with
    empty masks are left out (there is no object to keep).
    """
    records, _ = resolve_records(paths, "train", check_files="none")
    if train.holdout_fraction > 0:
        records, _ = holdout_split(records, train.holdout_fraction, train.holdout_seed)
    records = records[: train.max_images] if train.max_images else records
    images, masks = [], []
    for r in records:
        s = load_sample(r)
        if not s["mask"].any():
            continue
        img = Image.fromarray(s["image"]).resize((resolution, resolution), Image.BICUBIC)
        msk = Image.fromarray(s["mask"].astype(np.uint8) * 255).resize(
            (resolution, resolution), Image.NEAREST
        )
        images.append(np.asarray(img))
        masks.append(np.asarray(msk) > 0)
    if not images:
        raise ValueError(f"no training images with objects found in {paths.sample_info}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    m = torch.from_numpy(np.stack(masks))[:, None].float()
    return x, m


def batch_at(
    step: int, images: torch.Tensor, masks: torch.Tensor, batch_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step``: a seeded draw with horizontal flips, the same on every resume."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
    flip = torch.rand(batch_size, generator=g) < 0.5
    x, m = images[idx], masks[idx]
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    m = torch.where(flip[:, None, None, None], m.flip(-1), m)
    return x, m


def first_stage_step(model: LakeRed, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """VQ reconstruction (L1 + MSE) plus the quantiser's commitment/codebook loss."""
    out = model.vqvae(x)
    rec = F.l1_loss(out.sample, x) + F.mse_loss(out.sample, x)
    commit = out.commit_loss.mean()
    return {"loss": rec + commit, "reconstruction": rec, "commitment": commit}


def training_step(
    model: LakeRed,
    scheduler: DDPMScheduler,
    x: torch.Tensor,
    object_mask: torch.Tensor,
    rec_weight: float = 1.0,
    generator: torch.Generator | None = None,
    loss_type: str = "l1",
) -> dict[str, torch.Tensor]:
    """One LAKE-RED step: ``x`` ``B×3×H×W`` in [−1, 1], ``object_mask`` ``B×1×H×W`` (1 = object).

    ``loss = |ε − ε_θ(z_t, t, c)| + rec_weight · ‖z_rec·m − z₀·m‖²`` with ``m`` the latent
    background mask (LAKE-RED Eq. 8; ``loss_type`` picks L1, the official choice, or L2 for the
    diffusion term).
    """
    bg = 1.0 - object_mask
    with torch.no_grad():
        z0 = model.encode(x)
    cond, m, z_rec = model.condition(x, bg)
    noise = torch.randn(z0.shape, generator=generator, device=z0.device)
    t = torch.randint(
        0,
        scheduler.config.num_train_timesteps,
        (x.shape[0],),
        generator=generator,
        device=z0.device,
    )
    z_t = scheduler.add_noise(z0, noise, t)
    pred = model.denoise(z_t, t, cond, m)
    if loss_type == "l1":
        diffusion = F.l1_loss(pred, noise)
    elif loss_type == "l2":
        diffusion = F.mse_loss(pred, noise)
    else:
        raise ValueError(f"generator.train.loss_type must be 'l1' or 'l2', got {loss_type!r}")
    rec = background_reconstruction_loss(z_rec, z0, m)
    return {"loss": diffusion + rec_weight * rec, "diffusion": diffusion, "reconstruction": rec}


def run_hash(model_cfg: LakeRedConfig, train: TrainConfig, paths: DataPaths) -> str:
    payload = {
        "model": model_cfg.to_json(),
        "train": train.__dict__,
        "sample_info": hashlib.sha256(Path(paths.sample_info).read_bytes()).hexdigest(),
        "class_info": hashlib.sha256(Path(paths.class_info).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train(
    model_cfg: LakeRedConfig,
    train_cfg: TrainConfig,
    paths: DataPaths,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    progress: bool = True,
) -> LakeRed:
    """Train (or resume) into ``out_dir``: ``last/`` every ``checkpoint_every`` steps, ``final/``
    at the end. Returns the trained model. A finished ``final/`` is loaded, not retrained."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if (out_dir / "final" / STATE_FILE).is_file():
        return load_trained(out_dir / "final", model_cfg, device)
    torch.manual_seed(train_cfg.seed)
    model = LakeRed(model_cfg).to(device)
    images, masks = load_training_images(paths, model_cfg.resolution, train_cfg)
    scheduler = noise_scheduler(train_cfg)
    stages = [
        ("first_stage", train_cfg.first_stage_steps, train_cfg.first_stage_lr),
        ("lakered", train_cfg.steps, train_cfg.lr),
    ]
    stage_i, step, resume = 0, 0, None
    if (out_dir / "last" / STATE_FILE).is_file():
        weights, resume = load_checkpoint(out_dir / "last", device)
        model.load_state_dict(weights)
        stage_i = [s[0] for s in stages].index(resume["stage"])
        step = int(resume["step"])
        torch.set_rng_state(resume["rng"])
        log.info("resuming LAKE-RED training at %s step %d", resume["stage"], step)
    for i in range(stage_i, len(stages)):
        name, n_steps, lr = stages[i]
        if n_steps <= 0:
            continue
        params = (
            model.vqvae.parameters()
            if name == "first_stage"
            else [p for n, p in model.named_parameters() if not n.startswith("vqvae.")]
        )
        model.vqvae.requires_grad_(name == "first_stage")
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, n=n_steps: 0.5 * (1 + math.cos(math.pi * min(s, n) / n))
        )
        if name == "lakered" and (resume is None or resume["stage"] != name or step == 0):
            model.load_knowledge_from_codebook()
        if resume is not None and resume["stage"] == name and resume["optimizer"] is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["lr_scheduler"])
        else:
            step = 0
        model.train()
        bar = tqdm(
            range(step, n_steps),
            desc=f"lakered[{name}]",
            disable=not progress,
            initial=step,
            total=n_steps,
        )
        for step in bar:
            x, m = batch_at(step, images, masks, train_cfg.batch_size, train_cfg.seed + i)
            x, m = x.to(device), m.to(device)
            if name == "first_stage":
                losses = first_stage_step(model, x)
            else:
                g = torch.Generator(device=device).manual_seed(train_cfg.seed * 7919 + step)
                losses = training_step(
                    model, scheduler, x, m, train_cfg.rec_weight, g, train_cfg.loss_type
                )
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
            done = step + 1
            if done % train_cfg.checkpoint_every == 0 or done == n_steps:
                save_checkpoint(
                    out_dir / "last",
                    model.state_dict(),
                    {
                        "stage": stages[i + 1][0]
                        if done == n_steps and i + 1 < len(stages)
                        else name,
                        "step": 0 if done == n_steps and i + 1 < len(stages) else done,
                        "optimizer": opt.state_dict(),
                        "lr_scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state(),
                        "losses": {k: float(v.detach()) for k, v in losses.items()},
                    },
                )
        resume = None
    save_checkpoint(
        out_dir / "final",
        model.state_dict(),
        {"config": json.dumps(model_cfg.to_json()), "train": json.dumps(train_cfg.__dict__)},
    )
    return model.eval()


def load_trained(
    directory: str | os.PathLike, model_cfg: LakeRedConfig, device: str = "cpu"
) -> LakeRed:
    """Load a checkpoint directory (``model.safetensors`` + ``state.pt``) into a new model."""
    directory = Path(directory)
    model = LakeRed(model_cfg).to(device)
    weights, _ = load_checkpoint(directory, device)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"{directory / 'model.safetensors'} does not match the configured LAKE-RED size: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}); check generator.model against the checkpoint"
        )
    return model.eval()
