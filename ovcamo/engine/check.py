"""``check=true``: validate a training config, its data and its weights files, print the plan, and
stop before any compute (no model is built, no world rendered, no CLIP trained)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ovcamo.checkpoint import resolve_checkpoint_dir


class CheckFailed(ValueError):
    """``check=true`` found problems; the message lists all of them."""


def _weights_line(what: str, value: Any, problems: list[str]) -> str:
    if value in (None, ""):
        return f"{what}: none (random initialisation)"
    text = str(value)
    if os.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors")):
        path = Path(text).expanduser()
        if not path.is_file():
            problems.append(f"{what}: weights file {path} does not exist")
            return f"{what}: {path} (MISSING)"
        return f"{what}: {path} ({path.stat().st_size / 2**20:.1f} MiB)"
    return f"{what}: tag {text!r} (fetched by its library on first use; offline, give a file path)"


def check_training(cfg: DictConfig) -> list[str]:
    """Print what ``ovcamo-train`` would run and return the plan lines; raise
    :class:`CheckFailed` listing every problem found."""
    from ovcamo.data.mixing import SyntheticSetError, load_sources, source_shares
    from ovcamo.data.ovcamo_format import DataPaths, resolve_records
    from ovcamo.engine.distributed import pick_device
    from ovcamo.engine.train import run_dir_of

    problems: list[str] = []
    lines: list[str] = []
    tc = cfg.train
    for key, low in (("epochs", 1), ("batch_size", 1), ("grad_accum", 1)):
        if int(tc.get(key, 1)) < low:
            problems.append(f"train.{key} must be at least {low}, got {tc.get(key)}")
    if float(tc.lr) <= 0:
        problems.append(f"train.lr must be positive, got {tc.lr}")
    if tc.get("amp", "bf16") not in ("bf16", "none", None):
        problems.append(f"train.amp must be bf16 or none, got {tc.get('amp')!r}")
    if cfg.get("logger", {}).get("name", "jsonl") not in ("jsonl", "wandb", "none"):
        problems.append(f"logger.name must be jsonl, wandb or none, got {cfg.logger.name!r}")
    device = pick_device(str(cfg.get("device", "auto")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lines.append(f"device: {device}, {world} process(es)")

    backbone = cfg.model.backbone
    lines.append(
        f"model: {cfg.model.get('name')} on {backbone.name} at {backbone.image_size}×"
        f"{backbone.image_size}"
    )
    if backbone.get("pretrained") == "micro":
        if not cfg.data.get("world"):
            problems.append("backbone.pretrained=micro needs data=micro (a micro-world)")
        lines.append("  CLIP weights: the micro CLIP (trained on first use, then cached)")
    else:
        lines.append("  " + _weights_line("CLIP weights", backbone.get("pretrained"), problems))
    lines.append("  " + _weights_line("SAM weights", cfg.model.get("sam_checkpoint"), problems))

    sizes: list[int] = []
    shares: list[float] = []
    if cfg.data.get("world"):
        lines.append(
            f"data: micro-world {cfg.data.world.get('name', '')!r} "
            "(rendered on first use, then cached)"
        )
    else:
        try:
            paths = DataPaths.from_cfg(cfg.data)
        except KeyError as e:
            problems.append(str(e))
            paths = None
        if paths is not None:
            missing = [
                f"data.{k}={v}"
                for k, v in vars(paths).items()
                if not (
                    Path(v).is_file() if k in ("class_info", "sample_info") else Path(v).is_dir()
                )
            ]
            if missing:
                problems.append(
                    "missing dataset paths: "
                    + ", ".join(missing)
                    + " (point OVCAMO_ROOT or data.root at the OVCamo download, or set each key)"
                )
            else:
                for split in ("train", "test"):
                    _, report = resolve_records(paths, split)
                    lines.append(f"data {split}: {report.summary()}")
                    if report.n_errors:
                        problems.append(
                            f"data {split} split: {report.n_errors} unusable samples "
                            + (
                                "(data.strict=true stops on them)"
                                if cfg.data.get("strict")
                                else "(they will be skipped)"
                            )
                        )
                try:
                    sources = load_sources(cfg.data, paths)
                    shares = source_shares(cfg.data, sources)
                    sizes = [len(s.records) for s in sources]
                    for s, w in zip(sources, shares, strict=True):
                        lines.append(
                            f"  source {s.name}: {len(s.records)} samples, {w:.1%} of each batch"
                            + (f", NOVEL classes {s.novel_classes}" if s.novel_classes else "")
                        )
                except (SyntheticSetError, FileNotFoundError, ValueError) as e:
                    problems.append(str(e))
    if sizes:
        batches = math.ceil(math.ceil(sizes[0] / (int(tc.batch_size) * shares[0])) / max(world, 1))
        steps = math.ceil(batches / max(1, int(tc.get("grad_accum", 1)))) * int(tc.epochs)
        if tc.get("max_steps"):
            steps = min(steps, int(tc.max_steps))
        lines.append(
            f"train: {tc.epochs} epochs × {batches} batches of {tc.batch_size} per process, "
            f"{steps} optimiser steps, AdamW lr {tc.lr}, cosine annealing"
        )
    else:
        lines.append(f"train: {tc.epochs} epochs, batch {tc.batch_size}, AdamW lr {tc.lr}, cosine")

    run_dir = run_dir_of(cfg)
    existing = resolve_checkpoint_dir(run_dir / "checkpoints" / "last")
    if existing and not cfg.get("resume", False):
        problems.append(f"{run_dir} already holds a run: pass resume=true or another out_dir")
    lines.append(
        f"run folder: {run_dir}"
        + (f" (resuming from {existing})" if existing and cfg.get("resume") else "")
    )
    for line in lines:
        print(line)
    if problems:
        raise CheckFailed("check found problems:\n  - " + "\n  - ".join(problems))
    print("check passed: nothing was computed")
    return lines
