"""``ovcamo-train``: the BaCLIP training recipe (BaCLIP, CVPR 2026, §4.1) under Hydra.

AdamW with cosine annealing over optimiser steps, the paper augmentations, gradient accumulation,
bf16 autocast / channels_last / ``torch.compile`` on request, an optional validation every N
epochs (``train.val_every_epochs``; 0: none) on the held-out base-validation part with the
class-aware OVCOS metrics (``train.select``: ``final`` keeps the last weights as the result, the
paper's protocol; ``best`` also writes the best checkpoint by cIoU), a ``last`` checkpoint every N
steps, and exact resume: model, optimiser, scheduler, every rank's RNG and the data position are
restored, so a run killed at any step and restarted with ``resume=true`` ends with the same
weights, bit for bit on CPU, as one that was never interrupted.
DDP through ``torchrun`` (see :mod:`ovcamo.engine.distributed`); ``train.batch_size`` is the global
batch, split evenly over the processes.

Run folder: ``config.yaml`` (resolved), ``run_info.json``, ``metrics.jsonl``,
``checkpoints/{last,best}/`` (``model.safetensors`` with every weight but the frozen CLIP's,
``backbone.safetensors`` with the CLIP's unless an open_clip tag names it, ``state.pt``,
``config.json`` = the resolved model node): each loads with nothing but its own folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ovcamo.checkpoint import load_checkpoint, resolve_checkpoint_dir, save_checkpoint
from ovcamo.data.io import atomic_write_json, atomic_write_text
from ovcamo.data.mixing import (
    OUTSIDE_OV_PROTOCOL,
    MixedBatchSampler,
    MixedDataset,
    load_sources,
    source_shares,
    summarize_sources,
)
from ovcamo.data.transforms import EvalTransform, build_train_transform
from ovcamo.engine import distributed as D
from ovcamo.engine.check import (
    CheckFailed,
    check_training,
    optimizer_steps,
    preflight_problems,
    protocol_line,
    run_dir_of,
)
from ovcamo.engine.logging import RunLogger
from ovcamo.engine.predict import MODEL_CONFIG_FILE, SampleReadError, autocast, evaluate_model
from ovcamo.engine.resolve import plain, resolve_pretrained
from ovcamo.provenance import provenance

log = logging.getLogger(__name__)

#: Keys that may change between a run and its resume without changing what is computed.
RESUME_FREE_KEYS = ("out_dir", "resume", "check", "logger", "cache_dir", "device")
RESUME_FREE_TRAIN_KEYS = (
    "num_workers",
    "sample_cache_mb",
    "progress",
    "log_every_steps",
    "ckpt_every_steps",
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good state has been saved."""


class ResumeError(RuntimeError):
    """``resume=true`` found a checkpoint made with a different configuration, or none was expected."""


@dataclass
class TrainResult:
    """What a finished run leaves behind (also written to ``run_info.json``)."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    train_seconds: float
    steps: int
    epochs: int
    val_metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    skipped_samples: int = 0
    invalid_samples: int = 0
    outside_ov_protocol: bool = False


def collate_train(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``image`` ``B×3×S×S``, ``mask`` ``B×1×S×S``; unreadable samples listed under ``skipped``."""
    good = [s for s in samples if "skipped" not in s]
    return {
        "image": torch.stack([s["image"] for s in good]) if good else None,
        "mask": torch.stack([s["mask"] for s in good]) if good else None,
        "unique_id": [s["unique_id"] for s in good],
        "synthetic": [bool(s["synthetic"]) for s in good],
        "skipped": [(s["skipped"], s["error"]) for s in samples if "skipped" in s],
    }


def config_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The part of the config that determines the computation (what a resume must match)."""
    c = plain(cfg)
    for k in RESUME_FREE_KEYS:
        c.pop(k, None)
    for k in RESUME_FREE_TRAIN_KEYS:
        c.get("train", {}).pop(k, None)
    c.pop("hydra", None)
    return c


def _fingerprint_hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warm-up then cosine annealing to ``min_ratio`` of the base learning rate."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


class Trainer:
    """One training run; build with a resolved config, then call :meth:`fit`."""

    def __init__(self, cfg: DictConfig, dist: D.DistInfo, run_dir: Path):
        self.cfg, self.dist, self.run_dir = cfg, dist, run_dir
        self.tc = cfg.train
        self.ckpt_dir = run_dir / "checkpoints"
        self.progress = bool(self.tc.get("progress", True)) and dist.is_main

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from ovcamo.data import OVCamoDataset
        from ovcamo.data.config import resolve_data_paths
        from ovcamo.models import build_model

        cfg, tc, dist = self.cfg, self.tc, self.dist
        # Rank 0 renders the world / checks the files first; the others then read the cache.
        if not dist.is_main:
            D.barrier()
        self.paths = resolve_data_paths(cfg.data, cfg.get("cache_dir"))
        self.sources = load_sources(cfg.data, self.paths)
        if dist.is_main:
            D.barrier()
        self.shares = source_shares(cfg.data, self.sources)
        # Samples the load-time validation found unusable (missing, unreadable, ...): dropped.
        self.invalid_samples = sum(s.report.n_errors for s in self.sources if s.report)
        self.data_summary = summarize_sources(self.sources, self.shares)
        self.outside = bool(self.data_summary["outside_ov_protocol"])
        self.image_size = int(cfg.model.backbone.image_size)
        self.sampler = MixedBatchSampler(
            [len(s.records) for s in self.sources],
            self.shares,
            int(tc.batch_size),
            int(cfg.seed),
            rank=dist.rank,
            world_size=dist.world_size,
        )
        transform = build_train_transform(tc.get("augment"), self.image_size)
        workers = int(tc.get("num_workers", 0))
        self.loader = DataLoader(
            MixedDataset(
                self.sources,
                transform,
                cache_bytes=int(float(tc.get("sample_cache_mb") or 0) * 2**20),
            ),
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_train,
            pin_memory=dist.device.type == "cuda",
            persistent_workers=workers > 0,
            # Its own generator: creating an iterator must not draw from the global RNG, whose
            # state is part of the exact-resume contract (transforms are seeded per slot anyway).
            generator=torch.Generator().manual_seed(int(cfg.seed)),
        )
        holdout = float(cfg.data.get("holdout_fraction", 0.0))
        self.val_set = None
        if holdout > 0:
            self.val_set = OVCamoDataset(
                self.paths,
                "train",
                part="val",
                holdout_fraction=holdout,
                holdout_seed=int(cfg.data.get("holdout_seed", 0)),
                transform=EvalTransform(self.image_size),
                strict=bool(cfg.data.get("strict", False)),
            )
        self.base_classes = [
            c for c in _train_class_names(self.paths) if c not in self.data_summary_novel()
        ]
        self.candidates = self.base_classes + self.data_summary_novel()

        torch.manual_seed(int(cfg.seed))
        np.random.seed(int(cfg.seed) % 2**32)
        self.model = build_model(cfg.model).to(dist.device)
        if tc.get("channels_last", False):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = [p for p in self.model.trainable_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=float(tc.lr),
            betas=tuple(tc.get("betas", (0.9, 0.999))),
            weight_decay=float(tc.get("weight_decay", 0.01)),
            # One kernel over all parameters instead of a Python loop: a fifth of the loop's
            # time per step on CPU (2 % of a micro training step).
            fused=dist.device.type in ("cpu", "cuda") or None,
        )
        self.accum = max(1, int(tc.get("grad_accum", 1)))
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.accum)
        self.total_steps = total = optimizer_steps(len(self.sampler), tc)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_lambda(total, int(tc.get("warmup_steps", 0)), float(tc.get("min_lr_ratio", 0.0))),
        )
        self.forward_model: torch.nn.Module = self.model
        if dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.forward_model = DDP(
                self.model,
                device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                find_unused_parameters=bool(tc.get("ddp_find_unused", True)),
            )
        if tc.get("compile", False):
            self.forward_model = torch.compile(self.forward_model)

        self.epoch = self.batch = self.step = 0
        self.skipped: list[str] = []
        self.best: dict[str, float] = {}
        self.best_step = -1
        self.val_metrics: dict[str, float] = {}
        self.train_seconds = 0.0
        self.fingerprint = config_fingerprint(self.cfg)
        # The frozen parts' files this process has written into a checkpoint (see save).
        self.frozen_files: dict[str, Path] = {}

    def data_summary_novel(self) -> list[str]:
        return sorted({c for s in self.sources for c in s.novel_classes})

    # ---------------------------------------------------------------- checkpoints
    def _state(self, epoch: int, batch: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "seed": int(self.cfg.seed),
            "epoch": epoch,
            "batch": batch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "numpy_rng": _numpy_state(),
            "best": self.best,
            "best_step": self.best_step,
            "val_metrics": self.val_metrics,
            "skipped": self.skipped,
            "train_seconds": self.train_seconds,
            "world_size": self.dist.world_size,
            "config_hash": _fingerprint_hash(self.fingerprint),
        }

    def save(self, name: str, epoch: int, batch: int, rng: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoints/<name>`` (collective under DDP: every rank's RNG goes in)."""
        from ovcamo.models.build import backbone_weights

        rngs = D.all_gather_object(rng if rng is not None else D.rng_state())
        path = self.ckpt_dir / name
        if self.dist.is_main:
            frozen = backbone_weights(self.model)
            # The CLIP is frozen: this process writes its file once and links it afterwards.
            linked = {n: f for n, f in self.frozen_files.items() if n in frozen and f.is_file()}
            save_checkpoint(
                path,
                self.model.trainable_state_dict(),
                self._state(epoch, batch, rngs),
                extra_json={
                    MODEL_CONFIG_FILE: plain(self.cfg.model),
                    "fingerprint.json": self.fingerprint,
                },
                extra_weights={n: t for n, t in frozen.items() if n not in linked},
                linked=linked,
            )
            self.frozen_files = {n: path / n for n in frozen}
        D.barrier()
        return path

    def try_resume(self) -> bool:
        found = resolve_checkpoint_dir(self.ckpt_dir / "last")
        if found is None:
            return False
        weights, state = load_checkpoint(found, self.dist.device)
        if state.get("config_hash") != _fingerprint_hash(self.fingerprint):
            saved_fp = json.loads((found / "fingerprint.json").read_text(encoding="utf-8"))
            diff = _diff_keys(saved_fp, self.fingerprint)
            raise ResumeError(
                f"cannot resume from {found}: the configuration differs in {diff[:10]}; "
                "resume with the run's own settings (see its config.yaml) or use a new out_dir"
            )
        if state["world_size"] != self.dist.world_size:
            raise ResumeError(
                f"{found} was written by {state['world_size']} processes, this run has "
                f"{self.dist.world_size}; an exact resume needs the same number"
            )
        self.model.load_trainable_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        D.set_rng_state(state["rng"][self.dist.rank])
        _set_numpy_state(state["numpy_rng"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.best, self.best_step = dict(state["best"]), int(state["best_step"])
        self.val_metrics = dict(state["val_metrics"])
        self.skipped = list(state["skipped"])
        self.train_seconds = float(state["train_seconds"])
        return True

    # ---------------------------------------------------------------- loop
    def fit(self, logger: RunLogger) -> TrainResult:
        tc, dist = self.tc, self.dist
        epochs = int(tc.epochs)
        # 0 or null: no validation during the run (ovcamo-loop scores every run itself).
        val_every = int(tc.get("val_every_epochs") or 0)
        ckpt_every = int(tc.get("ckpt_every_steps", 0) or 0)
        log_every = max(1, int(tc.get("log_every_steps", 10)))
        max_steps = int(tc.get("max_steps") or 0)
        clip = tc.get("grad_clip")
        amp = tc.get("amp", "bf16")
        channels_last = bool(tc.get("channels_last", False))
        t0 = time.perf_counter() - self.train_seconds
        done = max_steps and self.step >= max_steps
        self.model.train()
        while self.epoch < epochs and not done:
            epoch = self.epoch
            self.sampler.set_epoch(epoch, self.batch)
            micro, running = 0, []
            window_images = window_synthetic = 0
            window_t0 = time.perf_counter()
            boundary_rng = D.rng_state()
            bar = tqdm(
                total=len(self.sampler),
                initial=self.batch,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not self.progress,
                dynamic_ncols=True,
            )
            for batch in self.loader if self.batch < len(self.sampler) else ():
                self.batch += 1
                bar.update(1)
                self._handle_skipped(batch["skipped"], logger)
                is_boundary = micro + 1 == self.accum or self.batch == len(self.sampler)
                empty = batch["image"] is None
                if dist.distributed:
                    empty = D.all_reduce_sum(float(empty), dist.device) > 0
                if not empty:
                    images = batch["image"].to(dist.device, non_blocking=True)
                    masks = batch["mask"].to(dist.device, non_blocking=True)
                    if channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    sync = dist.distributed and not is_boundary
                    ctx = self.forward_model.no_sync() if sync else contextlib.nullcontext()
                    with ctx:
                        with autocast(dist.device, amp):
                            out = self.forward_model(images, self.candidates)
                        losses = self.model.loss(
                            {k: v.float() if torch.is_tensor(v) else v for k, v in out.items()},
                            masks,
                        )
                        loss = losses["loss"]
                        bad = not torch.isfinite(loss.detach()).item()
                        if dist.distributed:
                            bad = D.all_reduce_sum(float(bad), dist.device) > 0
                        if bad:
                            self._stop_non_finite(loss, batch["unique_id"], boundary_rng)
                        (loss / self.accum).backward()
                    running.append({k: float(v.detach()) for k, v in losses.items()})
                    window_images += len(batch["unique_id"])
                    window_synthetic += sum(batch["synthetic"])
                micro += 1
                if not is_boundary:
                    continue
                if clip:
                    torch.nn.utils.clip_grad_norm_(self.params, float(clip))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                micro = 0
                boundary_rng = D.rng_state()
                self.train_seconds = time.perf_counter() - t0
                if self.step % log_every == 0 and running:
                    values = {
                        f"train/{k}": float(np.mean([r[k] for r in running])) for k in running[0]
                    }
                    elapsed = time.perf_counter() - window_t0
                    values.update(
                        {
                            "train/lr": self.scheduler.get_last_lr()[0],
                            "train/images_per_s": window_images * dist.world_size / elapsed,
                            "train/synthetic_share": window_synthetic / max(1, window_images),
                            "epoch": epoch,
                        }
                    )
                    window_images = window_synthetic = 0
                    window_t0 = time.perf_counter()
                    logger.log(values, self.step)
                    bar.set_postfix(loss=f"{values['train/loss']:.4f}")
                    running = []
                if ckpt_every and self.step % ckpt_every == 0:
                    self.save("last", epoch, self.batch, boundary_rng)
                if max_steps and self.step >= max_steps:
                    done = True
                    break
            bar.close()
            finished_epoch = self.batch >= len(self.sampler)
            if finished_epoch or done:
                if (
                    self.val_set is not None
                    and val_every > 0
                    and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs or done)
                ):
                    self._validate(logger, epoch)
                self.train_seconds = time.perf_counter() - t0
            if finished_epoch:
                self.epoch, self.batch = epoch + 1, 0
            self.save("last", self.epoch, self.batch)
        self.train_seconds = time.perf_counter() - t0
        best = self.ckpt_dir / "best"
        return TrainResult(
            run_dir=self.run_dir,
            best_checkpoint=best if resolve_checkpoint_dir(best) else None,
            last_checkpoint=self.ckpt_dir / "last",
            train_seconds=self.train_seconds,
            steps=self.step,
            epochs=self.epoch,
            val_metrics=self.val_metrics,
            best_metrics=self.best,
            skipped_samples=len(self.skipped),
            invalid_samples=self.invalid_samples,
            outside_ov_protocol=self.outside,
        )

    def _validate(self, logger: RunLogger, epoch: int) -> None:
        tc = self.tc
        metrics, metric, skipped = evaluate_model(
            self.model,
            self.val_set,
            self.base_classes,
            dist=self.dist,
            batch_size=int(tc.get("val_batch_size", tc.batch_size)),
            num_workers=int(tc.get("num_workers", 0)),
            amp=tc.get("amp", "bf16"),
            channels_last=bool(tc.get("channels_last", False)),
            progress=self.progress,
            strict=bool(self.cfg.data.get("strict", False)),
        )
        self.val_metrics = metrics
        logger.log({f"val/{k}": v for k, v in metrics.items()} | {"epoch": epoch}, self.step)
        if self.cfg.get("logger", {}).get("name") == "wandb":
            self._log_val_media(logger, metric)
        logger.info(
            f"epoch {epoch + 1} step {self.step}: val "
            + " ".join(
                f"{k}={metrics[k]:.4f}" for k in ("cSm", "cFwb", "cMAE", "cIoU") if k in metrics
            )
            + (f" ({len(skipped)} skipped)" if skipped else "")
        )
        # With select=final the validation only monitors: no checkpoint competes with the last.
        if self.tc.get("select", "final") != "best":
            return
        if not self.best or metrics["cIoU"] > self.best["cIoU"]:
            self.best, self.best_step = dict(metrics), self.step
            next_epoch, next_batch = (
                (epoch + 1, 0) if self.batch >= len(self.sampler) else (epoch, self.batch)
            )
            self.save("best", next_epoch, next_batch)

    def _log_val_media(self, logger: RunLogger, metric: Any) -> None:
        """The per-class table and a prediction grid of the validation (``logger=wandb``)."""
        from ovcamo.engine.visualize import validation_grid

        # Every rank: the table gathers the metric's states across processes.
        rows = metric.per_class_table(self.base_classes)
        if not logger.media:
            return
        grid = validation_grid(
            self.model,
            self.val_set,
            self.base_classes,
            self.dist.device,
            self.run_dir / "val_predictions.png",
        )
        logger.log_media(
            self.step,
            tables={"val/per_class": rows},
            images={"val/predictions": grid} if grid is not None else None,
        )

    def _handle_skipped(self, skipped: list[tuple[str, str]], logger: RunLogger) -> None:
        for uid, err in skipped:
            if self.cfg.data.get("strict", False):
                raise SampleReadError(uid, err)
            self.skipped.append(uid)
            log.warning("skipped sample %s: %s", uid, err)
            logger.log({"data/skipped_total": len(self.skipped), "data/skipped_id": uid}, self.step)
            logger.info(f"skipped unreadable sample {uid} ({err}); {len(self.skipped)} so far")

    def _stop_non_finite(
        self, loss: torch.Tensor, unique_ids: list[str], rng: dict[str, Any]
    ) -> None:
        ids = sorted({u for ids in D.all_gather_object(unique_ids) for u in ids})
        # Model and optimiser are untouched since the last optimiser step; the position goes back
        # to the first batch of the accumulation group that produced the bad loss.
        start = self.batch - 1 - (self.batch - 1) % self.accum
        path = self.save("last", self.epoch, start, rng)
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())}) at step {self.step + 1} (epoch "
            f"{self.epoch + 1}, batch {self.batch}); batch unique_ids: {ids}. The last good state "
            f"(after step {self.step}) is saved in {path}."
        )


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
        "name": str(name),
    }


def _set_numpy_state(s: dict[str, Any]) -> None:
    np.random.set_state(
        (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])
    )


def _train_class_names(paths: Any) -> list[str]:
    from ovcamo.data import class_names, load_class_info

    return class_names(load_class_info(paths.class_info), "train")


def run(cfg: DictConfig) -> TrainResult | None:
    """Train as ``cfg`` says; returns ``None`` after ``check=true`` (which only validates)."""
    if cfg.get("check", False):
        check_training(cfg)
        return None
    problems = preflight_problems(cfg)
    if problems:
        raise CheckFailed(problems, heading=None)
    threads = cfg.train.get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    dist = D.init_distributed(str(cfg.get("device", "auto")))
    try:
        return _run(cfg, dist)
    finally:
        D.cleanup()


def _run(cfg: DictConfig, dist: D.DistInfo) -> TrainResult:
    run_dir = run_dir_of(cfg)
    if not cfg.get("resume", False) and resolve_checkpoint_dir(run_dir / "checkpoints" / "last"):
        raise ResumeError(
            f"{run_dir} already holds a training run; pass resume=true to continue it or choose "
            "another out_dir"
        )
    if dist.is_main:
        resolved = resolve_pretrained(cfg)
    D.barrier()
    if not dist.is_main:
        resolved = resolve_pretrained(cfg)
    trainer = Trainer(resolved, dist, run_dir)
    trainer.setup()
    resumed = bool(cfg.get("resume", False)) and trainer.try_resume()
    banner = OUTSIDE_OV_PROTOCOL if trainer.outside else None
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(resolved, resolve=True))
    run_info = {
        "seed": int(cfg.seed),
        "world_size": dist.world_size,
        "device": str(dist.device),
        "provenance": provenance(),
        "command": sys.argv,
        "batches_per_epoch_per_rank": len(trainer.sampler),
        "global_batch": int(cfg.train.batch_size),
        "batch_per_process": int(cfg.train.batch_size) // dist.world_size,
        "optimizer_steps": trainer.total_steps,
        "val_samples": len(trainer.val_set) if trainer.val_set is not None else 0,
        "base_classes": trainer.base_classes,
        "data_validation": trainer.sources[0].report.to_json(),
        "synthetic_validation": [s.report.to_json() for s in trainer.sources[1:]],
        **trainer.data_summary,
        "outside_ov_protocol_note": banner,
    }
    logger = RunLogger(
        run_dir,
        cfg.get("logger"),
        enabled=dist.is_main,
        run_config=plain(resolved),
        banner=banner,
    )
    try:
        if dist.is_main:
            atomic_write_json(run_dir / "run_info.json", run_info)
        logger.info(
            f"{'resuming' if resumed else 'training'} {trainer.total_steps} steps "
            f"({len(trainer.sampler)} batches/epoch/rank × {cfg.train.epochs} epochs, "
            f"{dist.world_size} process(es) on {dist.device}) → {run_dir}"
            + (f" from epoch {trainer.epoch + 1} batch {trainer.batch}" if resumed else "")
        )
        logger.info(f"protocol: {protocol_line(cfg)}")
        if banner:
            logger.info(banner)
        for source in trainer.sources:
            if source.report is not None and source.report.n_errors:
                logger.info(f"{source.name}: unusable samples dropped\n{source.report.summary()}")
                logger.log({"data/invalid_samples": trainer.invalid_samples}, trainer.step)
            elif source.report is not None and source.report.n_warnings:
                logger.info(f"{source.name}: data warnings\n{source.report.summary()}")
        result = trainer.fit(logger)
    finally:
        logger.close()
    if dist.is_main:
        atomic_write_json(
            run_dir / "run_info.json",
            run_info | {"result": json.loads(json.dumps(asdict(result), default=str))},
        )
    return result


def main(cfg: DictConfig) -> None:
    """``ovcamo-train``: run, turning expected failures into a message and exit status. Logging
    is configured by the command (Hydra's job logging), never here: a library call leaves the
    caller's handlers as they are."""
    from ovcamo.checkpoint import CheckpointError
    from ovcamo.data.mixing import SyntheticSetError
    from ovcamo.data.ovcamo_format import DatasetFormatError, DatasetValidationError

    try:
        result = run(cfg)
    except NonFiniteLossError as e:
        print(f"ovcamo-train: {e}", file=sys.stderr)
        raise SystemExit(3) from e
    except (
        CheckFailed,
        CheckpointError,
        ResumeError,
        SampleReadError,
        SyntheticSetError,
        DatasetFormatError,
        DatasetValidationError,
        FileNotFoundError,
        KeyError,
    ) as e:
        print(f"ovcamo-train: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    if result is not None and int(__import__("os").environ.get("RANK", "0")) == 0:
        print(
            f"done in {result.train_seconds:.1f}s, {result.steps} steps; "
            f"val {json.dumps({k: round(v, 4) for k, v in result.val_metrics.items() if k[0] == 'c'})}; "
            f"run folder {result.run_dir}"
        )
