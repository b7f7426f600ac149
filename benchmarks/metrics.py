"""End-to-end speed and agreement of ``ovcamo-eval`` against a per-sample pysodmetrics loop.

Writes an OVCamo-format test split of mixed-size masks (384² to 1024×768, OVCamo's 61 test class
names, about 30 % of predictions naming a wrong class) and a folder of ``[class]uid.png``
predictions, then runs, each as a fresh process timed from start to exit:

* the reference: a loop that reads each pair as the official OVCamo evaluator does and calls
  pysodmetrics' Smeasure, WeightedFmeasure, MAE, Fmeasure and Emeasure, plus OVCamo's IoU
  (adaptive threshold and 256-threshold curve from the cumulative histogram), zeroing a sample
  whose class is wrong (MAE set to 1) and averaging as the official evaluator does;
* ``ovcamo-eval pred_dir=… out_dir=…`` with its defaults (two scoring processes, figures on).

With ``--repeat`` the two alternate and each keeps its fastest run. It prints wall seconds of both
(for ``ovcamo-eval`` to its ``metrics.json`` and to its exit, after the figures) and CPU seconds
(including the scoring processes), their ratios, the largest difference of every reported number
and of every per-sample number, the time of ``import ovcamo.metrics`` in a fresh interpreter, and
the load average. ``--json PATH`` also writes the table as JSON.

    python benchmarks/metrics.py --n 160,3770 --repeat 3,1 --json bench.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from ovcamo.metrics.summary import METRIC_KEYS

#: W×H of the predictions, cycled: from 384² to 1024×768.
SIZES = ((384, 384), (512, 512), (640, 480), (800, 600), (1024, 768))
WRONG_CLASS_SHARE = 0.3


def make_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A camouflage-like GT (one to three ellipses) and a soft, blurred, noisy prediction of it."""
    yy, xx = np.mgrid[:h, :w]
    gt = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
        gt |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    shift = np.roll(gt, (rng.integers(-8, 9), rng.integers(-8, 9)), axis=(0, 1)).astype(np.float32)
    soft = cv2.GaussianBlur(shift, (0, 0), rng.uniform(2, 8)) * rng.uniform(0.5, 1)
    soft += rng.normal(0, 0.08, (h, w)).astype(np.float32) + rng.uniform(0, 0.2)
    return (np.clip(soft, 0, 1) * 255).astype(np.uint8), gt


def write_benchmark_set(root: Path, n: int, seed: int = 0) -> Path:
    """``root/{class_info,sample_info}.json``, ``root/test/mask`` and ``root/pred`` with ``n`` pairs.

    Classes follow OVCamo's test split (its per-class sample counts when ``n`` is 3,770). A folder
    that is already complete (``root/done``) is reused. Returns ``root``.
    """
    from ovcamo.data import (
        ClassInfo,
        SampleInfo,
        load_class_info,
        write_class_info,
        write_sample_info,
    )
    from ovcamo.data.io import write_png
    from ovcamo.data.world import PACKAGED_CLASS_LIST

    if (root / "done").is_file():
        return root
    test = [c for c in load_class_info(PACKAGED_CLASS_LIST) if c.split == "test"]
    rng = np.random.default_rng(seed)
    # OVCamo's test samples in a shuffled order: all of them for n = 3,770, a random subset below.
    pool = np.repeat(np.arange(len(test)), [c.num_samples for c in test])
    labels = rng.permutation(np.resize(pool, max(n, len(pool))))[:n]
    infos = []
    for i, k in enumerate(labels):
        cls = test[k].name
        uid = f"{i:06d}_{cls}"
        w, h = SIZES[i % len(SIZES)]
        pred, gt = make_pair(rng, h, w)
        write_png(root / "test" / "mask" / f"{uid}.png", gt.astype(np.uint8) * 255)
        pcls = cls
        if rng.random() < WRONG_CLASS_SHARE:
            pcls = test[(k + 1 + rng.integers(len(test) - 1)) % len(test)].name
        write_png(root / "pred" / f"[{pcls}]{uid}.png", pred)
        infos.append(SampleInfo(uid, cls, f"{uid}.jpg", f"{uid}.png", i))
    counts = np.bincount(labels, minlength=len(test))
    write_class_info(
        root / "class_info.json",
        [
            ClassInfo(c.name, c.id, c.super_class, c.sub_class, "test", int(counts[j]))
            for j, c in enumerate(test)
        ],
    )
    write_sample_info(root / "sample_info.json", infos)
    (root / "done").write_text("ok\n", encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- the reference


def _ovcamo_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, np.ndarray]:
    """OVCamo's IoU on pysodmetrics' normalised map: adaptive and the 256-threshold curve."""
    from py_sod_metrics.utils import get_adaptive_threshold, prepare_data

    p, g = prepare_data(pred, gt)
    b = p >= get_adaptive_threshold(p, max_value=1)
    union = np.count_nonzero(b | g)
    adaptive = np.count_nonzero(b & g) / union if union else 0.0
    levels = (p * 255).astype(np.uint8)
    tp = np.cumsum(np.bincount(levels[g], minlength=256)[::-1])
    fp = np.cumsum(np.bincount(levels[~g], minlength=256)[::-1])
    union_t = (np.count_nonzero(g) + fp).astype(np.float64)
    curve = np.divide(tp, union_t, out=np.zeros_like(union_t), where=union_t != 0)
    return adaptive, curve


def run_reference(root: Path, out: Path) -> None:
    """The official evaluator's loop over ``root/pred``; writes the twelve numbers and per-sample
    class-aware scores to ``out`` (JSON)."""
    from py_sod_metrics import MAE, Emeasure, Fmeasure, Smeasure, WeightedFmeasure

    gt_class = {
        s["unique_id"]: s["base_class"]
        for s in json.loads((root / "sample_info.json").read_text(encoding="utf-8"))
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm, wfm, mae, fm, em = Smeasure(), WeightedFmeasure(), MAE(), Fmeasure(), Emeasure()
    ids, adp_iou, iou = [], [], []
    for path in sorted((root / "pred").iterdir()):
        cls, uid = path.stem[1:].split("]", 1)
        pred = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(root / "test" / "mask" / f"{uid}.png"), cv2.IMREAD_GRAYSCALE)
        gt = (mask > 0).astype(np.uint8) * 255
        for m in (sm, wfm, mae, fm, em):
            m.step(pred, gt)
        a, c = _ovcamo_iou(pred, gt)
        if cls != gt_class[uid]:
            sm.sms[-1] = wfm.weighted_fms[-1] = 0
            mae.maes[-1] = 1
            fm.adaptive_fms[-1] = em.adaptive_ems[-1] = 0
            fm.changeable_fms[-1] = np.zeros(256)
            em.changeable_ems[-1] = np.zeros(256)
            a, c = 0.0, np.zeros(256)
        adp_iou.append(a)
        iou.append(c)
        ids.append(uid)
    curves = {
        "fm": np.array(fm.changeable_fms, float),
        "em": np.array(em.changeable_ems, float),
        "iou": np.array(iou, float),
    }
    per_sample = {
        "sm": np.array(sm.sms, float),
        "wfm": np.array(wfm.weighted_fms, float),
        "mae": np.array(mae.maes, float),
        "adpfm": np.array(fm.adaptive_fms, float),
        "adpem": np.array(em.adaptive_ems, float),
        "adpiou": np.array(adp_iou, float),
    }
    for key, curve in curves.items():
        per_sample[f"avg{key}"] = curve.mean(axis=1)
        per_sample[f"max{key}"] = curve.max(axis=1)
    metrics = {k: float(per_sample[k].mean()) for k in per_sample if not k.startswith("max")}
    for key, curve in curves.items():
        metrics[f"max{key}"] = float(curve.mean(axis=0).max())
    out.write_text(
        json.dumps(
            {
                "metrics": {k: metrics[k] for k in METRIC_KEYS},
                "per_sample": {
                    uid: [float(per_sample[k][i]) for k in METRIC_KEYS] for i, uid in enumerate(ids)
                },
            }
        ),
        encoding="utf-8",
    )


# ----------------------------------------------------------------------------- timing


def timed(cmd: list[str], cwd: Path, marker: Path | None = None) -> dict[str, float]:
    """Run ``cmd`` to completion: wall seconds from start to exit (and to the last write of
    ``marker``), CPU seconds of it and of every descendant it waited for (the scoring processes)."""
    start_epoch = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{output.decode()[-3000:]}")
    out = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}
    if marker is not None:
        out["marker_s"] = marker.stat().st_mtime - start_epoch
    return out


def _eval_command() -> list[str]:
    script = Path(sys.executable).with_name("ovcamo-eval")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from ovcamo.cli import evaluate; evaluate()"]


def _read_per_sample(path: Path) -> dict[str, list[float]]:
    with path.open(encoding="utf-8", newline="") as f:
        return {r["unique_id"]: [float(r[k]) for k in METRIC_KEYS] for r in csv.DictReader(f)}


def run_n(n: int, workdir: Path, seed: int, workers: int, repeat: int = 1) -> dict:
    """Time both on ``n`` files, alternating ``repeat`` times; each keeps its fastest run (on a
    shared machine the least disturbed one)."""
    root = write_benchmark_set(workdir / f"set{n}", n, seed)
    ref_out = workdir / f"reference{n}.json"
    eval_dir = workdir / f"eval{n}"
    ref_cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--reference",
        str(root),
        str(ref_out),
    ]
    eval_cmd = [
        *_eval_command(),
        f"pred_dir={root / 'pred'}",
        f"data.class_info={root / 'class_info.json'}",
        f"data.sample_info={root / 'sample_info.json'}",
        f"data.test_mask_dir={root / 'test' / 'mask'}",
        f"out_dir={eval_dir}",
        f"num_workers={workers}",
    ]
    refs, runs = [], []
    for _ in range(repeat):
        refs.append(timed(ref_cmd, workdir))
        runs.append(timed(eval_cmd, workdir, marker=eval_dir / "metrics.json"))
    ref = min(refs, key=lambda r: r["wall_s"])
    ours = min(runs, key=lambda r: r["marker_s"])
    expected = json.loads(ref_out.read_text(encoding="utf-8"))
    got = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    reported = max(abs(got[k] - expected["metrics"][k]) for k in METRIC_KEYS)
    rows = _read_per_sample(eval_dir / "per_sample.csv")
    if set(rows) != set(expected["per_sample"]):
        raise RuntimeError("ovcamo-eval and the reference scored different samples")
    per_sample = max(
        float(np.max(np.abs(np.subtract(rows[u], v)))) for u, v in expected["per_sample"].items()
    )
    return {
        "n": n,
        "workers": workers,
        "repeat": repeat,
        "reference_wall_s": ref["wall_s"],
        "reference_cpu_s": ref["cpu_s"],
        "ovcamo_metrics_json_s": ours["marker_s"],
        "ovcamo_wall_s": ours["wall_s"],
        "ovcamo_cpu_s": ours["cpu_s"],
        "ratio_to_metrics_json": ref["wall_s"] / ours["marker_s"],
        "wall_ratio": ref["wall_s"] / ours["wall_s"],
        "cpu_ratio": ref["cpu_s"] / ours["cpu_s"],
        "max_abs_diff_reported": reported,
        "max_abs_diff_per_sample": per_sample,
        "cIoU": got["cIoU"],
    }


def import_time() -> dict[str, float]:
    """Seconds of ``import ovcamo.metrics`` in a fresh interpreter (best of three)."""
    code = (
        "import time; t = time.perf_counter(); import ovcamo.metrics; "
        "print(time.perf_counter() - t)"
    )
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        for _ in range(3)
    ]
    return {"import_ovcamo_metrics_s": min(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="160,3770", help="comma-separated numbers of files")
    parser.add_argument("--workers", type=int, default=2, help="ovcamo-eval's num_workers")
    parser.add_argument(
        "--repeat", default="1", help="runs per command and size, comma-separated per --n"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) the sets here")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--reference", nargs=2, type=Path, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.reference:
        run_reference(*args.reference)
        return

    import tempfile

    with tempfile.TemporaryDirectory(prefix="ovcamo-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        load_before = os.getloadavg()[0]
        sizes = [int(n) for n in args.n.split(",")]
        repeats = [int(r) for r in args.repeat.split(",")]
        repeats += repeats[-1:] * (len(sizes) - len(repeats))
        rows = [
            run_n(n, workdir, args.seed, args.workers, r)
            for n, r in zip(sizes, repeats, strict=False)
        ]
        load_after = os.getloadavg()[0]
    imports = import_time()

    print(
        "| files | reference s (CPU s) | ovcamo-eval to metrics.json s | ratio "
        "| ovcamo-eval to exit s (CPU s) | ratio | CPU ratio | max abs diff (reported / per sample) |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['n']} | {r['reference_wall_s']:.1f} ({r['reference_cpu_s']:.1f}) | "
            f"{r['ovcamo_metrics_json_s']:.1f} | {r['ratio_to_metrics_json']:.2f}× | "
            f"{r['ovcamo_wall_s']:.1f} ({r['ovcamo_cpu_s']:.1f}) | {r['wall_ratio']:.2f}× | "
            f"{r['cpu_ratio']:.2f}× | {r['max_abs_diff_reported']:.1e} / "
            f"{r['max_abs_diff_per_sample']:.1e} |"
        )
    print(f"\nimport ovcamo.metrics: {imports['import_ovcamo_metrics_s']:.2f} s")
    print(
        f"load average {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs"
    )
    if args.json:
        from ovcamo.data.io import atomic_write_json

        atomic_write_json(
            args.json,
            {
                "rows": rows,
                **imports,
                "load_average": [load_before, load_after],
                "cpus": os.cpu_count(),
                "args": {k: str(v) for k, v in vars(args).items()},
            },
        )


if __name__ == "__main__":
    main()
