"""Training pieces the diffusers generators share: the latents of a batch, the forward noising
process and its regression target, ẑ₀ from a prediction, and the loop (AdamW, each module's
gradient clipped apart, every loss term recorded at every step)."""

from __future__ import annotations

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
) -> TrainHistory:
    """AdamW steps of ``trainables`` on batches of ``train_cfg.batch_size`` indices drawn from
    ``range(n)``: ``steps`` of them (``train_cfg.steps`` by default), drawn with ``generator``
    (seeded by ``train_cfg.seed`` by default). Returns ``history`` with one row per step appended,
    tagged ``stage`` if given; the modules are left in eval mode.

    Each module's gradient norm is clipped to 1 apart: a large module's gradients (the UNet's)
    would otherwise set the joint norm and starve a small one (DiffuMatting's matting head).
    """
    history = history if history is not None else TrainHistory()
    if generator is None:
        generator = torch.Generator().manual_seed(int(train_cfg.get("seed", 0)))
    steps = int(train_cfg["steps"]) if steps is None else steps
    opt = torch.optim.AdamW(
        [{"params": list(t.module.parameters()), "lr": float(t.lr)} for t in trainables]
    )
    for t in trainables:
        t.module.train().requires_grad_(True)
    bs = min(int(train_cfg["batch_size"]), n)
    for _ in range(steps):
        idx = torch.randint(0, n, (bs,), generator=generator)
        losses = step(idx, generator)
        if isinstance(losses, torch.Tensor):
            losses = {"total": losses}
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        for t in trainables:
            torch.nn.utils.clip_grad_norm_(t.module.parameters(), 1.0)
        opt.step()
        row: dict[str, Any] = {k: float(v.detach()) for k, v in losses.items()}
        history.steps.append({"stage": stage, **row} if stage else row)
    for t in trainables:
        t.module.eval()
    return history


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
