"""Training pieces the diffusers generators share: the latents of a batch, the forward noising
process and its regression target, ẑ₀ from a prediction, and the loop (AdamW, each module's
gradient clipped apart, every loss term recorded at every step)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from torch import nn

from generation.sd.micro import write_folder
from generation.sd.parts import MissingWeightsError
from ovcamo.checkpoint import load_state, load_weights, save_weights

log = logging.getLogger(__name__)

#: A training step: ``(sample indices B, generator) →`` its loss terms with their weighted
#: ``"total"``, or the loss alone.
Step = Callable[[torch.Tensor, torch.Generator], "dict[str, torch.Tensor] | torch.Tensor"]


def encode_latents(
    vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z₀ ``B×C×h×w``: scaled posterior samples of ``images`` ``B×3×H×W`` in [−1, 1] (no
    gradient)."""
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        return posterior.sample(generator=generator) * vae.config.scaling_factor


@dataclass
class Noised:
    """One draw of the forward process: clean latents ``z0``, the ``noise`` added at timesteps
    ``t`` (one per row), the noisy latents ``zt``, and the schedule that related them."""

    scheduler: DDPMScheduler
    z0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    zt: torch.Tensor

    def target(self) -> torch.Tensor:
        """What the UNet regresses: the noise (ε-prediction) or the velocity (v-prediction)."""
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return self.noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(self.z0, self.noise, self.t)
        raise ValueError(f"unsupported prediction_type {kind!r}")

    def loss(self, prediction: torch.Tensor) -> torch.Tensor:
        """The denoising loss: MSE of the UNet's ``prediction`` against :meth:`target`."""
        return F.mse_loss(prediction, self.target())

    def x0(self, prediction: torch.Tensor) -> torch.Tensor:
        """ẑ₀ implied by the UNet's ``prediction`` through the schedule's ᾱ_t."""
        abar = self.scheduler.alphas_cumprod.to(self.zt)[self.t].view(-1, 1, 1, 1)
        if self.scheduler.config.prediction_type == "v_prediction":
            return abar.sqrt() * self.zt - (1 - abar).sqrt() * prediction
        return (self.zt - (1 - abar).sqrt() * prediction) / abar.sqrt()


def add_noise(
    scheduler: DDPMScheduler, z0: torch.Tensor, generator: torch.Generator | None = None
) -> Noised:
    """The forward process at a uniform random timestep per row of ``z0``."""
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=generator)
    t = t.to(z0.device)
    return Noised(scheduler, z0, noise, t, scheduler.add_noise(z0, noise, t))


@dataclass
class TrainHistory:
    """Every loss term at every step (and, for staged training, the stage's name)."""

    steps: list[dict[str, Any]] = field(default_factory=list)

    def mean(self, key: str, first: int | None = None, last: int | None = None) -> float:
        rows = self.steps[:first] if first else self.steps[-last:] if last else self.steps
        return sum(r[key] for r in rows) / len(rows)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps}


@dataclass
class Trainable:
    """A module the loop trains, with its own learning rate."""

    module: nn.Module
    lr: float


@dataclass
class LoopSettings:
    """How :func:`fit` runs, from a ``train`` node (every key optional; the defaults are a plain
    fp32 loop at a constant learning rate).

    ``mixed_precision`` (``no``, ``fp16``, ``bf16``: autocast of the step, fp16 with a gradient
    scaler), ``gradient_accumulation_steps`` (batches of ``batch_size`` per optimiser step),
    ``lr_scheduler`` and ``lr_warmup_steps`` (``diffusers.optimization.get_scheduler``),
    ``weight_decay`` (AdamW's, 0.01 by default as in torch), ``checkpoint_every`` (optimiser steps
    between checkpoints; 0: only at the end) and ``log_every`` (steps between jsonl rows).
    """

    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.01
    checkpoint_every: int = 0
    log_every: int = 1

    @classmethod
    def from_cfg(cls, train_cfg: Mapping[str, Any]) -> LoopSettings:
        out = cls(**{k: train_cfg[k] for k in cls.__dataclass_fields__ if k in train_cfg})
        if out.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                f"generator train.mixed_precision must be no, fp16 or bf16, got "
                f"{out.mixed_precision!r}"
            )
        if int(out.gradient_accumulation_steps) < 1:
            raise ValueError("generator train.gradient_accumulation_steps must be at least 1")
        return out


@dataclass
class RunOptions:
    """Where a paper-scale training keeps its checkpoints (``checkpoint_dir``, one subfolder per
    stage) and its jsonl log (``checkpoint_dir/log.jsonl``), whether it shows a progress bar, and
    the ``accelerate.Accelerator`` it runs under (``None``: :func:`fit` makes one) and the device
    its modules go to."""

    checkpoint_dir: Path | None = None
    progress: bool = False
    accelerator: Any = None
    device: Any = None

    def for_stage(self, stage: str | None = None) -> dict[str, Any]:
        """:func:`fit`'s keyword arguments for ``stage``."""
        if self.checkpoint_dir is None:
            return {"progress": self.progress, "accelerator": self.accelerator}
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return {
            "checkpoint_dir": self.checkpoint_dir / (stage or "train"),
            "log_path": self.checkpoint_dir / "log.jsonl",
            "progress": self.progress,
            "accelerator": self.accelerator,
        }


def make_accelerator(device: torch.device, mixed_precision: str = "no") -> Any:
    """An ``accelerate.Accelerator`` for a generator training on ``device`` (the CPU when the
    modules are there; fp16 needs CUDA, so the CPU trains in fp32 instead, as it samples). Under ``accelerate launch`` each process gets its own
    device and :func:`fit` averages gradients across processes."""
    from accelerate import Accelerator

    cpu = torch.device(device).type == "cpu"
    if cpu and mixed_precision == "fp16":
        log.info("train.mixed_precision=fp16 needs CUDA: training in fp32 on the CPU")
        mixed_precision = "no"
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def average_gradients(accelerator: Any, params: list[nn.Parameter]) -> None:
    """Mean of every gradient across the processes of an ``accelerate launch`` run."""
    for p in params:
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))


def fit(
    trainables: Sequence[Trainable],
    step: Step,
    n: int,
    train_cfg: Mapping[str, Any],
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    history: TrainHistory | None = None,
    stage: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    accelerator: Any = None,
    progress: bool = False,
    log_path: str | os.PathLike | None = None,
) -> TrainHistory:
    """AdamW steps of ``trainables`` on batches of ``train_cfg.batch_size`` indices drawn from
    ``range(n)``: ``steps`` of them (``train_cfg.steps`` by default), each over
    ``gradient_accumulation_steps`` batches, drawn with ``generator`` (seeded by
    ``train_cfg.seed`` by default). Returns ``history`` with one row per step appended (the loss
    terms averaged over the accumulated batches, the learning rate), tagged ``stage`` if given;
    the modules are left in eval mode. :class:`LoopSettings` lists the other keys.

    Each module's gradient norm is clipped to 1 apart: a large module's gradients (the UNet's)
    would otherwise set the joint norm and starve a small one (DiffuMatting's matting head).

    With ``checkpoint_dir``, ``checkpoint_dir/last`` is written every ``checkpoint_every`` steps
    and at the end (``accelerator.save_state``: optimiser, gradient scaler, RNG; the modules as
    safetensors; the step, the generator's state, the scheduler and the history), and a run
    finds it and resumes there: the resumed run ends with the weights an uninterrupted one has.
    A finished stage's checkpoint is loaded and nothing is trained. ``log_path`` gets one json
    row per ``log_every`` steps; ``progress`` shows a tqdm bar.
    """
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    settings = LoopSettings.from_cfg(train_cfg)
    history = history if history is not None else TrainHistory()
    if generator is None:
        generator = torch.Generator().manual_seed(int(train_cfg.get("seed", 0)))
    steps = int(train_cfg["steps"]) if steps is None else steps
    device = next(trainables[0].module.parameters()).device
    if accelerator is None:
        accelerator = make_accelerator(device, settings.mixed_precision)
    if accelerator.num_processes > 1:
        # Each process draws its own batches: a seed from the shared stream plus its rank.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        generator.manual_seed(seed + accelerator.process_index)
    params = [list(t.module.parameters()) for t in trainables]
    opt = torch.optim.AdamW(
        [{"params": p, "lr": float(t.lr)} for p, t in zip(params, trainables, strict=True)],
        weight_decay=float(settings.weight_decay),
    )
    sched = get_scheduler(
        settings.lr_scheduler,
        opt,
        num_warmup_steps=int(settings.lr_warmup_steps),
        num_training_steps=steps,
    )
    # The optimiser's state follows its parameters (the modules' device, not the accelerator's).
    opt = accelerator.prepare(opt, device_placement=[False])
    for t in trainables:
        t.module.train().requires_grad_(True)
    bs = min(int(train_cfg["batch_size"]), n)
    accum = int(settings.gradient_accumulation_steps)
    start = 0
    last = Path(checkpoint_dir) / "last" if checkpoint_dir is not None else None
    if last is not None and (last / LOOP_STATE).is_file():
        start = _load_loop_state(last, accelerator, trainables, generator, sched, history)
    bar = tqdm(
        range(start, steps),
        desc=stage or "train",
        initial=start,
        total=steps,
        disable=not progress or not accelerator.is_local_main_process,
    )
    for i in bar:
        opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for _ in range(accum):
            idx = torch.randint(0, n, (bs,), generator=generator)
            with accelerator.autocast():
                losses = step(idx, generator)
            if isinstance(losses, torch.Tensor):
                losses = {"total": losses}
            accelerator.backward(losses["total"] / accum if accum > 1 else losses["total"])
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if accelerator.num_processes > 1:
            average_gradients(accelerator, [p for group in params for p in group])
        accelerator.unscale_gradients()
        for group in params:
            torch.nn.utils.clip_grad_norm_(group, 1.0)
        opt.step()
        lr = sched.get_last_lr()[0]
        sched.step()
        row: dict[str, Any] = {k: v / accum for k, v in sums.items()}
        history.steps.append({"stage": stage, **row} if stage else row)
        bar.set_postfix({k: f"{v:.4f}" for k, v in row.items()})
        done = i + 1
        if log_path is not None and accelerator.is_main_process and done % settings.log_every == 0:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"stage": stage, "step": done, "lr": lr, **row}) + "\n")
        every = int(settings.checkpoint_every)
        if last is not None and (done == steps or (every > 0 and done % every == 0)):
            _save_loop_state(last, accelerator, trainables, generator, sched, history, done)
    for t in trainables:
        t.module.eval()
    return history


#: The loop's own state inside a checkpoint folder (beside accelerate's files).
LOOP_STATE = "loop_state.pt"


def _save_loop_state(
    last: Path,
    accelerator: Any,
    trainables: Sequence[Trainable],
    generator: torch.Generator,
    sched: Any,
    history: TrainHistory,
    done: int,
) -> None:
    """Write the checkpoint into a fresh folder, then move it over ``last`` (a kill mid-write
    leaves the previous checkpoint whole)."""
    import shutil

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    tmp = last.with_name(last.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    accelerator.save_state(str(tmp))
    for k, t in enumerate(trainables):
        save_weights(tmp / f"module_{k}.safetensors", t.module.state_dict())
    torch.save(
        {
            "step": done,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "lr_scheduler": sched.state_dict(),
            "history": history.steps,
        },
        tmp / LOOP_STATE,
    )
    old = last.with_name(last.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        last.rename(old)
    tmp.rename(last)
    shutil.rmtree(old, ignore_errors=True)


def _load_loop_state(
    last: Path,
    accelerator: Any,
    trainables: Sequence[Trainable],
    generator: torch.Generator,
    sched: Any,
    history: TrainHistory,
) -> int:
    """Restore a :func:`_save_loop_state` checkpoint; returns the step it was taken after."""
    accelerator.load_state(str(last))
    for k, t in enumerate(trainables):
        t.module.load_state_dict(load_weights(last / f"module_{k}.safetensors", "cpu"))
    state = load_state(last / LOOP_STATE)
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    sched.load_state_dict(state["lr_scheduler"])
    history.steps[:] = list(state["history"])
    return int(state["step"])


def paper_run(final: str | os.PathLike, train_cfg: Mapping[str, Any], device: Any) -> RunOptions:
    """The :class:`RunOptions` of a paper-scale training into ``final``: checkpoints and log in
    ``<final>.checkpoints`` (a killed run started again resumes there), a progress bar, and an
    accelerator on ``device`` (under ``accelerate launch``, each process's own GPU)."""
    from generation.sd.parts import pick_device

    settings = LoopSettings.from_cfg(train_cfg)
    final = Path(os.path.expanduser(str(final)))
    accelerator = make_accelerator(pick_device(device), settings.mixed_precision)
    return RunOptions(
        checkpoint_dir=final.with_name(final.name + ".checkpoints"),
        progress=True,
        accelerator=accelerator,
        device=accelerator.device if accelerator.num_processes > 1 else pick_device(device),
    )


def train_into(
    final: str | os.PathLike,
    present: bool,
    plan: str,
    check: bool,
    make: Callable[[Path], Mapping[str, Any]],
) -> str:
    """Train a model a paper config reads into the folder ``final`` (:func:`write_folder`), unless
    it is ``present`` already; with ``check`` only say what would be done. Returns what was done
    (or would be), in words, from ``plan``."""
    final = Path(os.path.expanduser(str(final)))
    if present:
        return f"{final} already holds it; remove that folder to train again"
    if final.exists():
        raise MissingWeightsError(
            f"{final} exists but holds no complete model: remove it, then train again"
        )
    if check:
        return f"would {plan}"
    write_folder(final, make)
    return f"{plan}: done"
