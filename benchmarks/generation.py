"""Generators side by side on the micro-world: seconds per sample, peak memory and quality.

One row per generator config (``ovcamo/conf/generator/<name>.yaml``). By default every config that runs
on CPU (``classic`` and the ``*_micro`` ones, so generators added later get rows of their own)
and, when CUDA is present, the official-size ones. Each generator runs in its own process, so
its peak memory is its own; a generator that trains on first use (``lakered_micro``) trains in
its "setup" column and is cached for the next run.

    python benchmarks/generation.py                                # table on stdout
    python benchmarks/generation.py --generators classic,lakered_micro --samples 24 \\
        --json out.json --grids docs/generation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# ``generation`` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from generation.base import Generator, SkipSample, SourceObject  # noqa: E402
from ovcamo import CONF_DIR  # noqa: E402
from ovcamo.data import DataPaths  # noqa: E402

OFFICIAL_CUDA_ONLY = ("lakered",)


def _seconds_per_generated(
    gen: Generator, source: SourceObject, want: int, max_tries: int
) -> float:
    """Mean seconds of the first ``want`` seeds that yield a sample (after one warm-up call).

    A seed the generator skips (e.g. a placement that makes the object too small) is not timed.
    """
    times: list[float] = []
    warmed = False
    for seed in range(max_tries):
        t = time.perf_counter()
        try:
            gen.generate(source, source.class_name, seed)
        except SkipSample:
            continue
        if warmed:
            times.append(time.perf_counter() - t)
        warmed = True
        if len(times) == want:
            break
    return sum(times) / len(times) if times else float("nan")


def default_generators(cuda: bool) -> list[str]:
    names = sorted(p.stem for p in (CONF_DIR / "generator").glob("*.yaml"))
    cpu = [n for n in names if n == "classic" or n.endswith("_micro")]
    return cpu + ([n for n in names if n in OFFICIAL_CUDA_ONLY] if cuda else [])


def run_one(name: str, samples: int, device: str, work: Path, grids: Path | None) -> dict:
    """Generate ``samples`` samples with generator ``name`` on the micro-world and score them."""
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from PIL import Image

    from generation.base import build_generator
    from generation.quality import SmallFeatureExtractor, evaluate_set
    from generation.run import generate
    from ovcamo.data import load_sample, resolve_records
    from ovcamo.data.config import resolve_data_paths

    k = 2
    overrides = [
        f"generator={name}",
        f"out_dir={work / name}",
        "planner.rule=k_rarest",
        f"planner.k={k}",
        f"planner.per_class={-(-samples // k)}",
        "progress=false",
        f"device={device}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("generate", overrides=overrides)
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    root = generate(cfg)
    total, total_cpu = time.perf_counter() - start, _cpu_seconds() - start_cpu
    summary = json.loads((root / "summary.json").read_text())
    per_sample = summary.get("seconds_per_sample", float("nan"))
    cache_dir = os.path.expanduser(str(cfg.cache_dir))
    paths = resolve_data_paths(cfg.data, cache_dir)

    # Seconds per sample at 384×384 (the paper's input size): the first micro-world source, upscaled.
    gen = build_generator(cfg.generator, data=paths, cache_dir=Path(cache_dir), device=device)
    first = json.loads((root / "plan.json").read_text())["items"][0]["source_unique_id"]
    records, _ = resolve_records(paths, "train", check_files="none")
    src = load_sample(next(r for r in records if r.unique_id == first))
    big = np.asarray(Image.fromarray(src["image"]).resize((384, 384), Image.BICUBIC))
    big_mask = np.asarray(Image.fromarray(src["mask"]).resize((384, 384), Image.NEAREST))
    source = SourceObject(big, big_mask.astype(bool), src["class_name"], src["unique_id"])
    per_sample_384 = _seconds_per_generated(gen, source, want=3, max_tries=12)

    quality = evaluate_set(root, paths, SmallFeatureExtractor(), kid_subset_size=10)
    row = {
        "generator": name,
        "written": summary["written"],
        "skipped": summary["skipped"],
        "setup_s": total - per_sample * summary["written"] if summary["written"] else total,
        "generate_cpu_s": total_cpu,
        "s_per_sample": per_sample,
        "s_per_sample_384": per_sample_384,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        **{f"q_{k}": v for k, v in quality.items()},
        "set": str(root),
    }
    if grids is not None:
        row["grid"] = str(write_grid(root, paths, grids / f"{name}_grid.png"))
    return row


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_grid(root: Path, source: DataPaths, path: Path, n: int = 6) -> Path:
    """Source | generated pairs with the mask outlined, ``n`` samples spread over classes."""
    from ovcamo.data import load_sample, load_sample_info, resolve_records
    from ovcamo.data.io import read_image, read_mask
    from ovcamo.report.grids import image_grid

    synth = DataPaths.from_paths_json(root / "paths.json")
    samples = load_sample_info(synth.sample_info)
    by_class: dict[str, list] = {}
    for s in samples:
        by_class.setdefault(s.base_class, []).append(s)
    chosen = []
    while len(chosen) < min(n, len(samples)):
        for group in by_class.values():
            if group and len(chosen) < n:
                chosen.append(group.pop(0))
    records = {r.unique_id: r for r in resolve_records(source, "train", check_files="none")[0]}
    images, masks, titles = [], [], []
    for s in chosen:
        src = load_sample(records[s.extra["source_unique_id"]])
        images += [src["image"], read_image(synth.train_image_dir / s.image_name)]
        masks += [src["mask"], read_mask(synth.train_mask_dir / s.mask_name)]
        titles += [
            f"source: {s.base_class}",
            f"{s.extra['generator']} seed {s.extra['seed'] % 1000}",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    return image_grid(images, path, titles=titles, masks=masks, ncols=4)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict]) -> str:
    cols = [
        ("generator", "generator"),
        ("written", "n"),
        ("setup_s", "setup s"),
        ("generate_cpu_s", "CPU s (setup + samples)"),
        ("s_per_sample", "s/sample"),
        ("s_per_sample_384", "s/sample @384"),
        ("peak_rss_mb", "peak RSS MB"),
        ("cuda_peak_mb", "CUDA peak MB"),
        ("q_fid", "FID (small)"),
        ("q_kid_mean", "KID (small)"),
        ("q_background_texture", "bg texture"),
        ("q_seam_halo", "seam/halo"),
        ("q_foreground_preservation", "fg kept"),
        ("q_mask_iou", "mask IoU"),
        ("q_camouflage", "camouflage"),
        ("q_camouflage_source", "camouflage (sources)"),
    ]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |")
    # Every generator starts from the same planned sources: the real reference row.
    ref = next((r for r in rows if "q_fid_source" in r), None)
    if ref is not None:
        real = {**{k: ref.get(k + "_source") for k, _ in cols}, "generator": "real (the sources)"}
        lines.append("| " + " | ".join(_fmt(real.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generators", help="comma-separated generator config names")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--grids", help="folder for <generator>_grid.png example grids")
    parser.add_argument("--work", help="folder for the generated sets (default: a temp folder)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    grids = Path(args.grids) if args.grids else None
    if args.one:
        row = run_one(args.one, args.samples, args.device, Path(args.work), grids)
        print("ROW " + json.dumps(row))
        return
    import torch

    names = (
        args.generators.split(",")
        if args.generators
        else default_generators(torch.cuda.is_available())
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="ovcamo-genbench-"))
    rows = []
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--samples",
            str(args.samples),
            "--device",
            args.device,
            "--work",
            str(work),
        ]
        if grids is not None:
            cmd += ["--grids", str(grids)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode != 0 or not found:
            print(
                f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr
            )
            rows.append({"generator": name, "error": proc.stderr[-500:]})
            continue
        rows.append(json.loads(found[-1][4:]))
    print(table(rows))
    print(
        f"\n{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    if args.json:
        from ovcamo.data.io import atomic_write_json

        atomic_write_json(args.json, {"rows": rows, "samples": args.samples, "device": args.device})


if __name__ == "__main__":
    main()
