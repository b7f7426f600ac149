"""Training LAKE-RED (CVPR 2024, §3.4): diffusion loss plus background reconstruction loss, with
atomic checkpoints and exact resume (weights, optimiser, RNG, step; the batch of step ``i`` is
drawn from a generator seeded with ``i``, so the data position resumes too).

Two stages: the VQ first stage (reconstruction + commitment) and the LAKE-RED stage (first stage
frozen). The official recipe starts from LDM's inpainting weights (``init_checkpoint``) and skips
the first stage; the micro-world model trains both from scratch.
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

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from generation.lakered.model import (
    LakeRed,
    LakeRedConfig,
    background_reconstruction_loss,
    prepare_inputs,
)
from ovcamo.checkpoint import STATE_FILE, WEIGHTS_FILE, load_checkpoint, load_state, save_checkpoint
from ovcamo.data import (
    DataPaths,
    UnreadableSampleError,
    holdout_split,
    load_sample,
    resolve_records,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """``ovcamo/conf/generator/lakered*.yaml`` ``train`` node."""

    first_stage_steps: int = 0
    first_stage_lr: float = 1e-3
    first_stage_warmup: int = 0
    scale_by_std: bool = False
    steps: int = 1000
    lr: float = 1e-4
    scale_lr: bool = False
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warm_up_steps: int = 0
    lr_start: float = 0.0
    lr_max: float = 1.0
    lr_min: float = 0.0
    mixed_precision: str = "no"
    rec_weight: float = 1.0
    loss_type: str = "l1"
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    checkpoint_every: int = 200
    seed: int = 0
    ema_decay: float = 0.9999
    holdout_fraction: float | None = None
    holdout_seed: int = 0
    max_images: int | None = None
    init_checkpoint: str | None = None

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def learning_rate(train: TrainConfig, processes: int = 1) -> float:
    """The LAKE-RED stage's learning rate: ``lr``, or with ``scale_lr`` LDM's scaling
    ``lr · batch_size · gradient_accumulation_steps · processes``."""
    if not train.scale_lr:
        return float(train.lr)
    return float(train.lr) * train.batch_size * train.gradient_accumulation_steps * processes


def warm_up_cosine(
    step: int, warm_up: int, total: int, start: float, peak: float, floor: float
) -> float:
    """LDM's ``LambdaWarmUpCosineScheduler`` factor at ``step``: linear from ``start`` to
    ``peak`` over ``warm_up`` steps, then a half cosine from ``peak`` to ``floor`` at ``total``."""
    if step < warm_up:
        return (peak - start) / warm_up * step + start
    decay = max(total - warm_up, 1)
    return floor + (peak - floor) * 0.5 * (
        1 + math.cos(math.pi * min(step - warm_up, decay) / decay)
    )


def _schedule(train: TrainConfig) -> dict[str, Any]:
    """LDM's noise schedule (``scaled_linear`` 0.0015 → 0.0205 over 1000 steps), as scheduler
    arguments."""
    return {
        "num_train_timesteps": train.num_train_timesteps,
        "beta_schedule": train.beta_schedule,
        "beta_start": train.beta_start,
        "beta_end": train.beta_end,
        "clip_sample": False,
    }


def noise_scheduler(train: TrainConfig) -> DDPMScheduler:
    """The training noise schedule."""
    return DDPMScheduler(**_schedule(train))


def ddim_scheduler(train: TrainConfig) -> DDIMScheduler:
    """DDIM over the training noise schedule, with the official sampler's timesteps
    (``1, 1 + T/S, …``) and final ``ᾱ`` (that of step 0)."""
    return DDIMScheduler(**_schedule(train), set_alpha_to_one=False, steps_offset=1)


class TrainingImages:
    """The train split's training part (its held-out base-validation part removed), read from
    disk a sample at a time in the official input conventions
    (:func:`~generation.lakered.model.prepare_inputs`, no dilation); only the records are held,
    so memory does not grow with the split.

    A sample is ``image`` and ``masked_image`` ``3×R×R`` in [−1, 1] and ``mask`` ``1×R×R`` in
    {−1, +1}; samples with empty masks (no object to keep) and unreadable ones are left out,
    found by one pass over the masks when the set is made.
    """

    def __init__(self, paths: DataPaths, resolution: int, train: TrainConfig) -> None:
        if train.holdout_fraction is None:
            raise ValueError(
                "generator.train.holdout_fraction is not set: LAKE-RED trains on the training "
                "part of the data config's split (data.holdout_fraction), which ovcamo-generate "
                "and ovcamo-loop pass; set it to that value when building the generator by hand"
            )
        # Validated as the trainer's loader does, so the held-out part is the trainer's.
        records, _ = resolve_records(paths, "train")
        records, _ = holdout_split(records, train.holdout_fraction, train.holdout_seed)
        records = records[: train.max_images] if train.max_images else records
        self.resolution = resolution
        self.records = []
        for r in records:
            try:
                if load_sample(r)["mask"].any():
                    self.records.append(r)
            except UnreadableSampleError as e:
                log.warning("LAKE-RED training skips %s", e)
        if not self.records:
            raise ValueError(f"no training images with objects found in {paths.sample_info}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = load_sample(self.records[i])
        return prepare_inputs(s["image"], s["mask"], self.resolution)

    def batch(self, idx: torch.Tensor | range) -> dict[str, torch.Tensor]:
        """Samples ``idx`` stacked: ``B×3×R×R``, ``B×3×R×R``, ``B×1×R×R``."""
        rows = [self[int(i)] for i in idx]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def first(self, n: int = 64) -> torch.Tensor:
        """The images of the first ``n`` samples, ``n×3×R×R`` (latent statistics, codebook)."""
        return self.batch(range(min(n, len(self))))["image"]


def load_training_images(paths: DataPaths, resolution: int, train: TrainConfig) -> TrainingImages:
    """The :class:`TrainingImages` of ``paths``' train split."""
    return TrainingImages(paths, resolution, train)


def batch_at(
    step: int,
    data: TrainingImages | Mapping[str, torch.Tensor],
    batch_size: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """The batch of ``step``: a seeded draw with horizontal flips, the same on every resume;
    ``data`` is a :class:`TrainingImages` or tensors with one row per sample."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n = len(data) if isinstance(data, TrainingImages) else next(iter(data.values())).shape[0]
    idx = torch.randint(0, n, (batch_size,), generator=g)
    flip = (torch.rand(batch_size, generator=g) < 0.5)[:, None, None, None]
    rows = (
        data.batch(idx)
        if isinstance(data, TrainingImages)
        else {k: v[idx] for k, v in data.items()}
    )
    return {k: torch.where(flip, v.flip(-1), v) for k, v in rows.items()}


def first_stage_step(
    model: LakeRed, x: torch.Tensor, quantize: bool = True
) -> dict[str, torch.Tensor]:
    """VQ reconstruction (L1 + MSE) plus the quantiser's commitment/codebook loss; without
    ``quantize`` a plain autoencoder step (the decoder reads the unquantised latent)."""
    out = model.vqvae.decode(model.vqvae.encode(x).latents, force_not_quantize=not quantize)
    rec = F.l1_loss(out.sample, x) + F.mse_loss(out.sample, x)
    commit = out.commit_loss.mean()
    return {"loss": rec + commit, "reconstruction": rec, "commitment": commit}


@torch.no_grad()
def init_codebook(model: LakeRed, images: torch.Tensor, seed: int = 0) -> None:
    """Set the VQ codebook to ``K`` latent vectors drawn from ``images``' encodings, so every
    code starts where the encoder puts latents (diffusers draws tiny random codes, which a short
    training collapses onto a few)."""
    flat = model.vqvae.encode(images).latents.permute(0, 2, 3, 1).flatten(0, 2)
    g = torch.Generator().manual_seed(seed)
    n, k = flat.shape[0], model.vqvae.quantize.n_e
    idx = torch.randperm(n, generator=g)[:k] if n >= k else torch.randint(0, n, (k,), generator=g)
    model.vqvae.quantize.embedding.weight.copy_(flat[idx.to(flat.device)])


def training_step(
    model: LakeRed,
    scheduler: DDPMScheduler,
    batch: Mapping[str, torch.Tensor],
    rec_weight: float = 1.0,
    generator: torch.Generator | None = None,
    loss_type: str = "l1",
) -> dict[str, torch.Tensor]:
    """One LAKE-RED step on a batch of :func:`load_training_images` tensors.

    ``loss = |ε − ε_θ(z_t, t, c)| + rec_weight · ‖c·m − z₀·m‖²`` with ``c`` the blended condition
    and ``m`` the ±1 latent mask (:func:`~generation.lakered.model.background_reconstruction_loss`;
    ``loss_type`` picks L1, the official choice, or L2 for the diffusion term).
    """
    with torch.no_grad():
        z0 = model.encode(batch["image"])
    cond, m, _ = model.condition(batch["masked_image"], batch["mask"])
    noise = torch.randn(z0.shape, generator=generator, device=z0.device)
    t = torch.randint(
        0,
        scheduler.config.num_train_timesteps,
        (z0.shape[0],),
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
    rec = background_reconstruction_loss(cond, z0, m)
    return {"loss": diffusion + rec_weight * rec, "diffusion": diffusion, "reconstruction": rec}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def run_hash(model_cfg: LakeRedConfig, train: TrainConfig, paths: DataPaths) -> str:
    """Hash of what decides a training run: sizes, recipe, the data files and the initial
    weights' content."""
    payload = {
        "model": model_cfg.to_json(),
        "train": train.__dict__,
        "sample_info": _file_digest(Path(paths.sample_info)),
        "class_info": _file_digest(Path(paths.class_info)),
    }
    if train.init_checkpoint:
        payload["init"] = _file_digest(
            Path(os.path.expanduser(train.init_checkpoint)) / WEIGHTS_FILE
        )
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def init_checkpoint_message(path: Path) -> str:
    """What ``train.init_checkpoint`` must hold and how to make it."""
    return (
        f"LAKE-RED initial checkpoint not found: {path} (needs {WEIGHTS_FILE} and {STATE_FILE}). "
        "The official recipe starts LAKE-RED from LDM's inpainting model plus a copy of its VQ "
        "codebook: fetch LDM's inpainting_big last.ckpt on a connected machine, convert it with "
        "`python -m generation.lakered.convert last.ckpt <dir> --no-retrieval` (which makes the "
        "codebook copy) and set generator.train.init_checkpoint=<dir>."
    )


def load_initial(model: LakeRed, directory: str | os.PathLike, device: str = "cpu") -> dict:
    """Load converted weights (``train.init_checkpoint``) into ``model``; returns their notes."""
    path = Path(os.path.expanduser(str(directory)))
    if not (path / WEIGHTS_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(init_checkpoint_message(path))
    weights, state = load_checkpoint(path, device)
    _load_exact(model, weights, path)
    return json.loads(state.get("notes") or "{}")


def _load_exact(model: LakeRed, weights: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"{path / WEIGHTS_FILE} does not match the configured LAKE-RED size: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}); check generator.model against the checkpoint"
        )


def train(
    model_cfg: LakeRedConfig,
    train_cfg: TrainConfig,
    paths: DataPaths,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    progress: bool = True,
) -> LakeRed:
    """Train (or resume) into ``out_dir``: ``last/`` every ``checkpoint_every`` steps, ``final/``
    at the end, a json row per step in ``log.jsonl``. Returns the trained model. A finished ``final/`` is loaded, not retrained.

    It runs under ``accelerate`` (``train.mixed_precision`` in the LAKE-RED stage, several GPUs
    under ``accelerate launch``: gradients averaged, batches drawn per process, the main process
    writes). The model starts from ``train.init_checkpoint`` when set (converted weights, see
    :func:`init_checkpoint_message`), else from scratch. The LAKE-RED stage keeps an exponential
    moving average of its weights (``ema_decay``, LDM's warm-up ``(1 + n)/(10 + n)``); ``final/``
    holds the averaged weights, which the sampler uses, as the official sampler does.
    """
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "final" / STATE_FILE).is_file():
        return load_trained(out_dir / "final", model_cfg, device)
    from generation.sd.training import LoopSettings, average_gradients, make_accelerator

    LoopSettings.from_cfg({"mixed_precision": train_cfg.mixed_precision})
    acc = make_accelerator(torch.device(device), train_cfg.mixed_precision)
    # Under `accelerate launch` each process trains on its own device and draws its own batches.
    rank = acc.process_index
    if acc.num_processes > 1:
        device = str(acc.device)
    torch.manual_seed(train_cfg.seed)
    model = LakeRed(model_cfg).to(device)
    notes = (
        load_initial(model, train_cfg.init_checkpoint, device) if train_cfg.init_checkpoint else {}
    )
    data = load_training_images(paths, model_cfg.resolution, train_cfg)
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
    ema = None
    for i in range(stage_i, len(stages)):
        name, n_steps, lr = stages[i]
        if n_steps <= 0:
            continue
        params = (
            list(model.vqvae.parameters())
            if name == "first_stage"
            else [p for n, p in model.named_parameters() if not n.startswith("vqvae.")]
        )
        model.vqvae.requires_grad_(name == "first_stage")
        if name == "first_stage":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s, n=n_steps: warm_up_cosine(s, 0, n, 0.0, 1.0, 0.0)
            )
        else:
            opt = torch.optim.AdamW(
                params,
                lr=learning_rate(train_cfg, acc.num_processes),
                weight_decay=train_cfg.weight_decay,
            )
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt,
                lambda s, n=n_steps: warm_up_cosine(
                    s,
                    train_cfg.warm_up_steps,
                    n,
                    train_cfg.lr_start,
                    train_cfg.lr_max,
                    train_cfg.lr_min,
                ),
            )
        if name == "lakered" and (resume is None or resume["stage"] != name or step == 0):
            if train_cfg.scale_by_std:
                model.scale_latents_by_std(data.first().to(device))
            model.load_knowledge_from_codebook()
        if name == "lakered" and train_cfg.ema_decay > 0:
            ema = EMAModel(params, decay=train_cfg.ema_decay)
        if name == "lakered":
            # Mixed precision (autocast, fp16's gradient scaler) in the LAKE-RED stage.
            opt = acc.prepare(opt, device_placement=[False])
        if resume is not None and resume["stage"] == name and resume["optimizer"] is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["lr_scheduler"])
            if ema is not None:
                ema.load_state_dict(resume["ema"])
            if acc.scaler is not None and resume.get("scaler") is not None:
                acc.scaler.load_state_dict(resume["scaler"])
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
        accum = 1 if name == "first_stage" else train_cfg.gradient_accumulation_steps
        for step in bar:
            opt.zero_grad(set_to_none=True)
            for micro in range(accum):
                # Batch `step` alone without accumulation; else its `micro`-th part.
                draw = step if accum == 1 else step * accum + micro
                batch = {
                    k: v.to(device)
                    for k, v in batch_at(
                        draw, data, train_cfg.batch_size, train_cfg.seed + i + 1_000_033 * rank
                    ).items()
                }
                if name == "first_stage":
                    if step == train_cfg.first_stage_warmup > 0:
                        init_codebook(model, data.first().to(device), train_cfg.seed)
                    quantize = step >= train_cfg.first_stage_warmup
                    losses = first_stage_step(model, batch["image"], quantize)
                else:
                    g = torch.Generator(device=device).manual_seed(
                        train_cfg.seed * 7919 + draw + 15_485_863 * rank
                    )
                    with acc.autocast():
                        losses = training_step(
                            model, scheduler, batch, train_cfg.rec_weight, g, train_cfg.loss_type
                        )
                loss = losses["loss"] / accum if accum > 1 else losses["loss"]
                if name == "lakered":
                    acc.backward(loss)
                else:
                    loss.backward()
            if acc.num_processes > 1:
                average_gradients(acc, params)
            if name == "lakered":
                acc.unscale_gradients()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            lr_used = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            if ema is not None:
                ema.step(params)
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()})
            done = step + 1
            if acc.is_main_process:
                row = {k: float(v.detach()) for k, v in losses.items()}
                row |= {"stage": name, "step": done, "lr": lr_used}
                with open(out_dir / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            if (done % train_cfg.checkpoint_every == 0 or done == n_steps) and acc.is_main_process:
                next_stage = done == n_steps and i + 1 < len(stages)
                save_checkpoint(
                    out_dir / "last",
                    model.state_dict(),
                    {
                        "stage": stages[i + 1][0] if next_stage else name,
                        "step": 0 if next_stage else done,
                        "optimizer": opt.state_dict(),
                        "lr_scheduler": sched.state_dict(),
                        "ema": ema.state_dict() if ema is not None else None,
                        "rng": torch.get_rng_state(),
                        "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                        "losses": {k: float(v.detach()) for k, v in losses.items()},
                    },
                )
        if ema is not None:
            ema.copy_to(params)
        resume = None
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return model.eval()
    save_checkpoint(
        out_dir / "final",
        model.state_dict(),
        {
            "config": json.dumps(model_cfg.to_json()),
            "train": json.dumps(train_cfg.__dict__),
            "notes": json.dumps(notes),
        },
    )
    return model.eval()


def load_trained(
    directory: str | os.PathLike, model_cfg: LakeRedConfig, device: str = "cpu"
) -> LakeRed:
    """Load a checkpoint directory (``model.safetensors`` + ``state.pt``) into a new model."""
    directory = Path(directory)
    model = LakeRed(model_cfg).to(device)
    weights, _ = load_checkpoint(directory, device)
    _load_exact(model, weights, directory)
    return model.eval()


def checkpoint_notes(directory: str | os.PathLike) -> dict[str, Any]:
    """The provenance notes a converted or trained checkpoint carries (``{}`` when none)."""
    return json.loads(load_state(Path(directory) / STATE_FILE).get("notes") or "{}")
