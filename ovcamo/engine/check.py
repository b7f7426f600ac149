"""``check=true``: validate a training config, its data and its weights files, print the plan, and
stop before any compute (no model is built, no world rendered, no CLIP trained)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ovcamo import CONF_DIR
from ovcamo.data.ovcamo_format import DataPaths, resolve_records
from ovcamo.engine.resolve import MICRO

# The torch-backed modules (checkpoints, data mixing, devices, models) are imported inside the
# functions that need them: ``ovcamo-eval`` imports :func:`setting_problems` from here and its
# scoring path never loads torch (its forked workers must not inherit torch's locks).


@dataclass(frozen=True)
class Problem:
    """One thing a check found wrong: ``where`` is the config key (or file) at fault, ``message``
    the whole sentence shown to the user, which names ``where`` and the fix."""

    where: str
    message: str

    def __str__(self) -> str:
        return self.message


class CheckFailed(ValueError):
    """``check=true`` (or the check before a run) found problems: ``problems`` lists all of them,
    the message shows them, one a line under ``heading`` (``None``: on one line, ``; `` between)."""

    def __init__(self, problems: Sequence[Problem], heading: str | None = "check found problems:"):
        self.problems = list(problems)
        texts = [str(p) for p in self.problems]
        super().__init__(
            "; ".join(texts) if heading is None else heading + "\n  - " + "\n  - ".join(texts)
        )


def run_dir_of(cfg: DictConfig) -> Path:
    """``cfg.out_dir``, or Hydra's per-job folder inside a multirun sweep."""
    try:
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.runtime.output_dir)
    except ValueError:  # no Hydra job is running
        pass
    return Path(str(cfg.out_dir)).expanduser()


def _sam_line(model: DictConfig) -> str:
    from ovcamo.models.sam_decoder import sam_checkpoint_path

    if model.get("decoder", {}).get("type", "sam") != "sam":
        return "SAM weights: not used (conv decoder)"
    value = model.get("sam_checkpoint")
    path = sam_checkpoint_path(value)
    if path is None:
        asked = " (asked for with model.sam_checkpoint=none)" if value is not None else ""
        return f"SAM weights: none, random initialisation{asked}"
    path = Path(path).expanduser()
    if not path.is_file():
        return f"SAM weights: {path} (MISSING)"
    return f"SAM weights: {path} ({path.stat().st_size / 2**20:.1f} MiB)"


def _weights_line(what: str, value: Any, problems: list[Problem]) -> str:
    if value in (None, ""):
        return f"{what}: none (random initialisation)"
    text = str(value)
    if os.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors")):
        path = Path(text).expanduser()
        if not path.is_file():
            problems.append(Problem(str(path), f"{what}: weights file {path} does not exist"))
            return f"{what}: {path} (MISSING)"
        return f"{what}: {path} ({path.stat().st_size / 2**20:.1f} MiB)"
    return f"{what}: tag {text!r} (fetched by its library on first use; offline, give a file path)"


def sam_problems(model: DictConfig) -> list[Problem]:
    """A SAM file that is named but missing, or none at all where the config requires one."""
    from ovcamo.models.sam_decoder import SAM_CHECKPOINTS, SAM_URL, sam_checkpoint_path

    if model.get("decoder", {}).get("type", "sam") != "sam":
        return []
    value = model.get("sam_checkpoint")
    path = sam_checkpoint_path(value)
    sam_type = str(model.get("sam_type", "vit_b"))
    name = SAM_CHECKPOINTS.get(sam_type, SAM_CHECKPOINTS["vit_b"])
    if path is not None:
        if Path(path).expanduser().is_file():
            return []
        return [
            Problem(
                "model.sam_checkpoint",
                f"model.sam_checkpoint: the SAM file {path} does not exist. Point SAM_CHECKPOINT "
                f"(or model.sam_checkpoint) at the official {name} ({SAM_URL}{name}), or pass "
                "model.sam_checkpoint=none to train the decoder from random weights.",
            )
        ]
    if value is None and model.get("sam_required", False):
        return [
            Problem(
                "model.sam_checkpoint",
                "No SAM checkpoint is set, but this experiment reproduces the paper, whose prompt "
                "encoder and mask decoder start from an official SAM checkpoint. Download "
                f"{name} ({SAM_URL}{name}) and export SAM_CHECKPOINT=/path/to/{name} (or pass "
                "model.sam_checkpoint=/path/to/it); to train the decoder from random weights "
                "instead, which is not the paper's setting, pass model.sam_checkpoint=none.",
            )
        ]
    return []


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def setting_problems(cfg: Any, prefix: str = "") -> list[Problem]:
    """Numeric settings of any command's config that no run can use, found by key name anywhere
    in ``cfg`` (``hydra`` aside): a batch size (``batch_size``, ``*_batch_size``) below 1, a
    worker count (``num_workers``) below 0, ``epochs`` below 1 and a negative ``max_steps``.
    ``null`` is left to the code that reads the key (it means a default there)."""
    rules = {
        "batch_size": (1, "a whole number, 1 or more"),
        "num_workers": (0, "a whole number, 0 or more (0: load in the main process)"),
        "epochs": (1, "a whole number, 1 or more"),
        "max_steps": (0, "a whole number of optimiser steps (0 or null: no limit)"),
    }
    problems: list[Problem] = []
    for key in cfg:
        if not prefix and key == "hydra":
            continue
        try:
            value = cfg[key]
        except Exception:  # an unresolvable value is reported when the command reads it
            continue
        rule = rules.get("batch_size" if str(key).endswith("batch_size") else str(key))
        if rule is not None and value is not None and not (_whole(value) and value >= rule[0]):
            problems.append(Problem(f"{prefix}{key}", f"{prefix}{key}={value!r} must be {rule[1]}"))
        elif OmegaConf.is_dict(value):
            problems += setting_problems(value, f"{prefix}{key}.")
    return problems


def optimizer_steps(batches_per_epoch: int, cfg_train: Any) -> int:
    """Optimiser steps of a run: ``ceil(batches / train.grad_accum)`` per epoch times
    ``train.epochs``, capped by ``train.max_steps`` when that is set (0 or null: no cap)."""
    accum = max(1, int(cfg_train.get("grad_accum", 1)))
    steps = math.ceil(batches_per_epoch / accum) * int(cfg_train.epochs)
    if cfg_train.get("max_steps"):
        steps = min(steps, int(cfg_train.max_steps))
    return steps


def preflight_problems(cfg: DictConfig, world_size: int | None = None) -> list[Problem]:
    """Settings that would make a training run fail late or not be what its config claims,
    found from the config alone: run by ``check=true`` and before any training starts."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    tc = cfg.train
    problems = setting_problems(cfg)
    if int(tc.get("grad_accum", 1)) < 1:
        problems.append(
            Problem(
                "train.grad_accum",
                f"train.grad_accum must be at least 1, got {tc.get('grad_accum')}",
            )
        )
    problems += sam_problems(cfg.model)
    batch = int(tc.get("batch_size", 1))
    if batch >= 1 and batch % world:
        problems.append(
            Problem(
                "train.batch_size",
                f"train.batch_size={batch} is the global batch, split over the {world} processes, "
                f"and must be a multiple of {world}: choose a batch size divisible by the number of "
                "processes (or scale train.lr with the batch you choose).",
            )
        )
    select = tc.get("select", "final")
    if select not in ("final", "best"):
        problems.append(
            Problem("train.select", f"train.select must be final or best, got {select!r}")
        )
    val_every = tc.get("val_every_epochs")
    if not isinstance(val_every, int | None) or (val_every or 0) < 0:
        problems.append(
            Problem(
                "train.val_every_epochs",
                "train.val_every_epochs must be a whole number of epochs, 0 or more (0 or null: "
                f"no validation during the run), got {val_every!r}",
            )
        )
    elif select == "best" and not val_every:
        problems.append(
            Problem(
                "train.val_every_epochs",
                "train.select=best keeps the best validated checkpoint, but train.val_every_epochs="
                f"{val_every} never validates: set it to 1 or more",
            )
        )
    backbone = cfg.model.backbone
    clip = cfg.get("clip")
    if backbone.get("pretrained") == MICRO and clip is not None and clip.model != backbone.name:
        matching = [
            p.stem
            for p in sorted((CONF_DIR / "clip").glob("*.yaml"))
            if OmegaConf.load(p).get("model") == backbone.name
        ]
        problems.append(
            Problem(
                "clip.model",
                f"backbone.pretrained=micro trains the micro CLIP clip.model={clip.model!r}, but "
                f"the backbone is {backbone.name!r}: choose the clip config that goes with the "
                "backbone"
                + (f" (clip={matching[0]})" if matching else f" (clip.model={backbone.name})"),
            )
        )
    return problems


def protocol_line(cfg: DictConfig) -> str:
    """What is trained on and which weights are the result, in words."""
    holdout = float(cfg.data.get("holdout_fraction", 0.0))
    best = cfg.train.get("select", "final") == "best"
    if holdout <= 0:
        note = " (train.select=best has no validation part to choose by)" if best else ""
        return f"every base image is trained on; the final weights are the result{note}"
    result = "the best base-validation checkpoint (by cIoU)" if best else "the final weights"
    return f"{holdout:.0%} of each base class is held out for validation; the result is {result}"


def check_training(cfg: DictConfig, verdict: bool = True) -> list[str]:
    """Print what ``ovcamo-train`` would run and return the plan lines; raise
    :class:`CheckFailed` listing every problem found. ``verdict=False`` leaves the closing "check
    passed" line to a caller that checks more (``ovcamo-loop``)."""
    from ovcamo.checkpoint import resolve_checkpoint_dir
    from ovcamo.data.mixing import SyntheticSetError, load_sources, source_shares
    from ovcamo.engine.distributed import pick_device

    problems: list[Problem] = []
    lines: list[str] = []
    tc = cfg.train
    problems += preflight_problems(cfg)
    if float(tc.lr) <= 0:
        problems.append(Problem("train.lr", f"train.lr must be positive, got {tc.lr}"))
    if tc.get("amp", "bf16") not in ("bf16", "none", None):
        problems.append(
            Problem("train.amp", f"train.amp must be bf16 or none, got {tc.get('amp')!r}")
        )
    if cfg.get("logger", {}).get("name", "jsonl") not in ("jsonl", "wandb", "none"):
        problems.append(
            Problem(
                "logger.name", f"logger.name must be jsonl, wandb or none, got {cfg.logger.name!r}"
            )
        )
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
            problems.append(
                Problem(
                    "backbone.pretrained",
                    "backbone.pretrained=micro needs data=micro (a micro-world)",
                )
            )
        lines.append("  CLIP weights: the micro CLIP (trained on first use, then cached)")
    else:
        lines.append("  " + _weights_line("CLIP weights", backbone.get("pretrained"), problems))
    lines.append("  " + _sam_line(cfg.model))

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
            problems.append(Problem("data", str(e)))
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
                    Problem(
                        "data",
                        "missing dataset paths: "
                        + ", ".join(missing)
                        + " (point OVCAMO_ROOT or data.root at the OVCamo download, or set each key)",
                    )
                )
            else:
                for split in ("train", "test"):
                    _, report = resolve_records(paths, split)
                    lines.append(f"data {split}: {report.summary()}")
                    if report.n_errors:
                        problems.append(
                            Problem(
                                "data",
                                f"data {split} split: {report.n_errors} unusable samples "
                                + (
                                    "(data.strict=true stops on them)"
                                    if cfg.data.get("strict")
                                    else "(they will be skipped)"
                                ),
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
                    problems.append(Problem("data.synthetic", str(e)))
    per_process = f"{int(tc.batch_size) // world} per process" if world > 1 else "1 process"
    batch = f"global batch {tc.batch_size} ({per_process})"
    if sizes and not setting_problems(cfg):
        batches = math.ceil(sizes[0] / (int(tc.batch_size) * shares[0]))
        steps = optimizer_steps(batches, tc)
        lines.append(
            f"train: {tc.epochs} epochs × {batches} batches, {batch}, {steps} optimiser steps, "
            f"AdamW lr {tc.lr}, cosine annealing"
        )
    else:
        limit = f", at most {tc.max_steps} optimiser steps" if tc.get("max_steps") else ""
        lines.append(f"train: {tc.epochs} epochs{limit}, {batch}, AdamW lr {tc.lr}, cosine")
    lines.append(f"protocol: {protocol_line(cfg)}")

    run_dir = run_dir_of(cfg)
    existing = resolve_checkpoint_dir(run_dir / "checkpoints" / "last")
    if existing and not cfg.get("resume", False):
        problems.append(
            Problem(
                str(run_dir), f"{run_dir} already holds a run: pass resume=true or another out_dir"
            )
        )
    lines.append(
        f"run folder: {run_dir}"
        + (f" (resuming from {existing})" if existing and cfg.get("resume") else "")
    )
    if not problems:
        from ovcamo.models.breakdown import model_breakdown_lines

        lines += model_breakdown_lines(cfg.model)
    for line in lines:
        print(line)
    if problems:
        raise CheckFailed(problems)
    if verdict:
        print("check passed: nothing was computed")
    return lines
