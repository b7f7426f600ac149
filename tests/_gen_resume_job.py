"""A tiny two-stage generator training (a micro UNet's noise prediction, then the UNet and a
second module together, with a warm-up schedule and checkpoints every 2 steps), run as a script
by tests/test_generation_training_resume.py: ``python _gen_resume_job.py OUT [KILL_AT]`` writes
the final weights to ``OUT/final.safetensors``; with ``KILL_AT`` the process SIGKILLs itself
inside optimiser step ``KILL_AT`` of the second stage."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

from generation.sd.parts import sd_noise_scheduler, tiny_unet
from generation.sd.training import RunOptions, Trainable, TrainHistory, add_noise, fit
from ovcamo.checkpoint import save_weights


def main(out: Path, kill_at: int | None) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = tiny_unet(
        {"block_out_channels": [8, 16], "attention_head_dim": 4, "norm_num_groups": 4}, 4, 8
    )
    extra = torch.nn.Conv2d(4, 4, 1)
    latents = torch.randn(6, 4, 8, 8)
    text = torch.randn(6, 3, 8)
    scheduler = sd_noise_scheduler()
    cfg = {
        "batch_size": 2,
        "seed": 1,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
        "gradient_accumulation_steps": 2,
        "checkpoint_every": 2,
    }
    run = RunOptions(checkpoint_dir=out / "checkpoints")
    g = torch.Generator().manual_seed(1)
    history = TrainHistory()
    calls = {"n": 0}

    def step(idx: torch.Tensor, gen: torch.Generator, second: bool) -> torch.Tensor:
        if second:
            calls["n"] += 1
            if kill_at is not None and calls["n"] > 2 * kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        z0 = extra(latents[idx]) if second else latents[idx]
        noised = add_noise(scheduler, z0, gen)
        return noised.loss(unet(noised.zt, noised.t, encoder_hidden_states=text[idx]).sample)

    for stage, trainables, steps in (
        ("first", [Trainable(unet, 1e-3)], 3),
        ("second", [Trainable(unet, 1e-3), Trainable(extra, 1e-2)], 5),
    ):
        fit(
            trainables,
            lambda idx, gen, s=stage: step(idx, gen, s == "second"),
            len(latents),
            cfg,
            steps=steps,
            generator=g,
            history=history,
            stage=stage,
            **run.for_stage(stage),
        )
    weights = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    weights |= {f"extra.{k}": v for k, v in extra.state_dict().items()}
    save_weights(out / "final.safetensors", weights)
    torch.save({"history": history.steps}, out / "history.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
