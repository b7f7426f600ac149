"""Speed and memory of BaCLIP: forward and train-step time per image, peak memory, trainable vs
frozen parameters, for the micro and the paper configuration (random weights).

Every (configuration, device, options) row runs in a fresh subprocess, so its peak resident memory
(``getrusage`` max RSS on CPU, ``max_memory_allocated`` on CUDA) is its own. The candidate classes
are OVCamo's 14 base classes, as in training.

    python benchmarks/model.py --json bench_model.json
    python benchmarks/model.py --configs paper --devices cuda --amp --channels-last --compile
    python benchmarks/model.py --configs micro --batch 16 --threads 1 --procs 1 2 3

``--procs N`` runs N copies of a row at once (each its own process) and reports their mean step
and the steps per second of all N together: how many one-thread trainings a machine runs side by
side before they slow each other down (the loop's ``loop.workers``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS: dict[str, dict[str, Any]] = {
    "micro": {"model": "baclip_micro", "backbone": "micro", "batch": 8},
    "paper": {"model": "baclip", "backbone": "convnext_large_d_320", "batch": 2},
}


def base_classes() -> list[str]:
    from ovcamo.data.ovcamo_format import load_class_info
    from ovcamo.data.world import PACKAGED_CLASS_LIST

    return [c.name for c in load_class_info(PACKAGED_CLASS_LIST) if c.split == "train"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    config: str,
    device: str,
    steps: int,
    amp: bool,
    channels_last: bool,
    compile_model: bool,
    batch: int = 0,
) -> dict[str, Any]:
    """Build one configuration and time it; runs inside the worker subprocess."""
    from ovcamo.models import create_model

    spec = CONFIGS[config]
    dev = torch.device(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = create_model(
        spec["model"], backbone=spec["backbone"], clip_checkpoint=None, device=dev
    ).train()
    build_s = time.perf_counter() - t0
    counts = model.parameter_counts()
    rss_built = _rss_mb()
    size = model.backbone.image_size
    b = batch or spec["batch"]
    images = torch.rand(b, 3, size, size, device=dev)
    masks = (torch.rand(b, 1, size, size, device=dev) > 0.5).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    classes = base_classes()
    forward = torch.compile(model) if compile_model else model
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)
    # As the trainer builds it.
    optimiser = torch.optim.AdamW(
        model.trainable_parameters(), lr=3e-5, fused=dev.type in ("cpu", "cuda") or None
    )

    def train_step() -> None:
        with autocast:
            out = forward(images, classes)
            loss = model.loss(out, masks)["loss"]
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def eval_step() -> None:
        with torch.no_grad(), autocast:
            forward(images, classes)

    model.eval()
    eval_step()  # warm-up: class embeddings are computed and cached here
    _sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        eval_step()
    _sync(dev)
    forward_s = (time.perf_counter() - t0) / steps
    forward_cpu_s = (time.process_time() - c0) / steps
    model.train()
    train_step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        train_step()
    _sync(dev)
    train_s = (time.perf_counter() - t0) / steps
    train_cpu_s = (time.process_time() - c0) / steps
    row = {
        "config": config,
        "model": spec["model"],
        "backbone": spec["backbone"],
        "image_size": size,
        "batch": b,
        "device": device,
        "threads": torch.get_num_threads(),
        "amp_bf16": amp,
        "channels_last": channels_last,
        "compile": compile_model,
        "steps": steps,
        "build_s": round(build_s, 2),
        "forward_s_per_image": forward_s / b,
        "train_step_s": train_s,
        "train_step_s_per_image": train_s / b,
        # CPU seconds of this process (all threads): robust to other jobs sharing the machine.
        "forward_cpu_s_per_image": forward_cpu_s / b,
        "train_step_cpu_s": train_cpu_s,
        "trainable_params": counts["trainable"],
        "frozen_params": counts["frozen"],
        "rss_after_build_mb": round(rss_built, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
    }
    if dev.type == "cuda":
        row["cuda_peak_train_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name(dev)
    return row


def run_workers(args: argparse.Namespace, config: str, device: str, procs: int) -> dict[str, Any]:
    """``procs`` workers of one row at once → their mean row, with ``procs`` and
    ``steps_per_s_all`` (the steps per second of all of them together)."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        config,
        "--devices",
        device,
        "--steps",
        str(args.steps if args.steps else (10 if config == "micro" else 3)),
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
    ]
    cmd += [
        flag
        for flag, on in (
            ("--amp", args.amp),
            ("--channels-last", args.channels_last),
            ("--compile", args.compile),
        )
        if on
    ]
    running = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    rows = []
    for proc in running:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark of {config} on {device} failed:\n{err[-4000:]}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    row = dict(rows[0])
    for key in (
        "forward_s_per_image",
        "train_step_s",
        "train_step_s_per_image",
        "train_step_cpu_s",
    ):
        row[key] = sum(r[key] for r in rows) / procs
    row["procs"] = procs
    row["steps_per_s_all"] = sum(1 / r["train_step_s"] for r in rows)
    return row


COLUMNS = (
    ("config", "config", "<7"),
    ("device", "device", "<6"),
    ("opts", "opts", "<12"),
    ("batch", "batch", ">5"),
    ("procs", "procs", ">5"),
    ("fwd s/img", "forward_s_per_image", ">10.4f"),
    ("train s/step", "train_step_s", ">12.3f"),
    ("train cpu-s", "train_step_cpu_s", ">11.2f"),
    ("train s/img", "train_step_s_per_image", ">11.3f"),
    ("steps/s all", "steps_per_s_all", ">11.2f"),
    ("peak MB", "peak_mb", ">9.0f"),
    ("trainable", "trainable_params", ">11,"),
    ("frozen", "frozen_params", ">12,"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    widths = [int("".join(ch for ch in fmt.split(".")[0] if ch.isdigit())) for _, _, fmt in COLUMNS]
    print(
        " ".join(f"{title:{fmt[0]}{w}}" for (title, _, fmt), w in zip(COLUMNS, widths, strict=True))
    )
    print("-" * (sum(widths) + len(widths) - 1))
    for r in rows:
        shown = {
            **r,
            "opts": "+".join(k for k in ("amp_bf16", "channels_last", "compile") if r[k]) or "fp32",
            "peak_mb": r.get("cuda_peak_train_mb", r["peak_rss_mb"]),
        }
        print(" ".join(f"{shown[key]:{fmt}}" for _, key, fmt in COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu (+ cuda if present)"
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps (default 10 micro, 3 paper)"
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="images per step (default: 8 micro, 2 paper)"
    )
    parser.add_argument(
        "--procs", type=int, nargs="+", default=[1], help="copies of each row run at once"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        row = measure(
            args.worker,
            args.devices[0],
            args.steps,
            args.amp,
            args.channels_last,
            args.compile,
            args.batch,
        )
        print(json.dumps(row))
        return
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = [run_workers(args, c, d, n) for c in args.configs for d in devices for n in args.procs]
    print_table(rows)
    if args.json:
        from ovcamo.data.io import atomic_write_json

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
