"""Speed and agreement of the OVCOS evaluator against a per-sample pysodmetrics loop.

Writes N prediction/GT pairs per image size as an OVCamo-format test split, then scores them

* with ``ovcamo.engine.evaluate.score_prediction_dir`` (process pool, histogram-vectorised), and
* with the reference: a loop that reads each pair as the official OVCamo evaluator does and calls
  pysodmetrics' Smeasure, WeightedFmeasure, MAE, Fmeasure, Emeasure, plus the IoU of DESIGN §4
  (adaptive threshold and the 256-threshold curve from the cumulative histogram),

and prints throughput of both, their ratio and the largest absolute difference of every per-sample
measure and every reported number. ``--json PATH`` also writes the table as JSON.

    python benchmarks/metrics.py --n 40 --workers 2 --json bench.json
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from ovcamo.data import ClassInfo, DataPaths, SampleInfo, write_class_info, write_sample_info
from ovcamo.data.io import atomic_write_json, write_png
from ovcamo.engine.evaluate import score_prediction_dir
from ovcamo.metrics import METRIC_KEYS, sample_scores, summarize
from ovcamo.metrics.functional import CURVE_KEYS, NUM_THRESHOLDS, SCALAR_KEYS

CLASSES = ["snow leopard", "reccoon", "moth", "crab", "owl"]


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


def write_benchmark_set(root: Path, n: int, h: int, w: int, seed: int) -> tuple[DataPaths, Path]:
    """An OVCamo-format test split of ``n`` masks and a folder of ``[class]uid.png`` predictions."""
    rng = np.random.default_rng(seed)
    paths = DataPaths(
        root / "class_info.json",
        root / "sample_info.json",
        root / "train" / "image",
        root / "train" / "mask",
        root / "test" / "image",
        root / "test" / "mask",
    )
    pred_dir = root / "pred"
    infos = []
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        uid = f"{i:06d}_{cls}"
        pred, gt = make_pair(rng, h, w)
        write_png(paths.test_mask_dir / f"{uid}.png", gt.astype(np.uint8) * 255)
        # About one prediction in eight names the wrong class, as a real classifier would.
        pcls = cls if rng.random() > 0.125 else CLASSES[(i + 1) % len(CLASSES)]
        write_png(pred_dir / f"[{pcls}]{uid}.png", pred)
        infos.append(SampleInfo(uid, cls, f"{uid}.jpg", f"{uid}.png", i))
    write_class_info(
        paths.class_info,
        [ClassInfo(c, i, "animal", (c,), "test", n // len(CLASSES)) for i, c in enumerate(CLASSES)],
    )
    write_sample_info(paths.sample_info, infos)
    return paths, pred_dir


def reference_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, np.ndarray]:
    """IoU of DESIGN §4 on pysodmetrics' normalised map: adaptive and 256-threshold curve."""
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


def reference_loop(pred_dir: Path, mask_dir: Path) -> dict[str, np.ndarray | list]:
    """The official evaluator's loop: read each pair, run every pysodmetrics measure on it."""
    from py_sod_metrics import MAE, Emeasure, Fmeasure, Smeasure, WeightedFmeasure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm, wfm, mae, fm, em = Smeasure(), WeightedFmeasure(), MAE(), Fmeasure(), Emeasure()
    ids, pcls, adp_iou, iou = [], [], [], []
    for path in sorted(pred_dir.iterdir()):
        cls, uid = path.stem[1:].split("]", 1)
        pred = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        gt = (cv2.imread(str(mask_dir / f"{uid}.png"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
        gt *= 255
        for m in (sm, wfm, mae, fm, em):
            m.step(pred, gt)
        a, c = reference_iou(pred, gt)
        adp_iou.append(a)
        iou.append(c)
        ids.append(uid)
        pcls.append(cls)
    return {
        "ids": ids,
        "pred_class": pcls,
        "sm": np.array(sm.sms, float),
        "wfm": np.array(wfm.weighted_fms, float),
        "mae": np.array(mae.maes, float),
        "adpfm": np.array(fm.adaptive_fms, float),
        "adpem": np.array(em.adaptive_ems, float),
        "adpiou": np.array(adp_iou, float),
        "fm": np.array(fm.changeable_fms, float),
        "em": np.array(em.changeable_ems, float),
        "iou": np.array(iou, float),
    }


def reference_vectors(ref: dict) -> np.ndarray:
    """Reference results in the layout of ``SampleScores.to_vector`` (N, SCORE_LENGTH)."""
    return np.concatenate(
        [np.stack([ref[k] for k in SCALAR_KEYS], axis=1), *(ref[k] for k in CURVE_KEYS)], axis=1
    )


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished pool workers: robust to other load."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_size(n: int, h: int, w: int, workers: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ovcamo-bench-") as tmp:
        paths, pred_dir = write_benchmark_set(Path(tmp), n, h, w, seed)

        t0, c0 = time.perf_counter(), _cpu_seconds()
        ref = reference_loop(pred_dir, paths.test_mask_dir)
        t_ref, c_ref = time.perf_counter() - t0, _cpu_seconds() - c0

        t0, c0 = time.perf_counter(), _cpu_seconds()
        ours = score_prediction_dir(pred_dir, paths, num_workers=workers)
        t_ours, c_ours = time.perf_counter() - t0, _cpu_seconds() - c0

        # Same arithmetic without file reading or a pool: the per-sample speed-up alone.
        pairs = []
        for uid in ref["ids"][: min(n, 10)]:
            p = cv2.imread(str(next(pred_dir.glob(f"*]{uid}.png"))), cv2.IMREAD_GRAYSCALE)
            g = cv2.imread(str(paths.test_mask_dir / f"{uid}.png"), cv2.IMREAD_GRAYSCALE) > 0
            pairs.append((p, g))
        t0 = time.perf_counter()
        for p, g in pairs:
            sample_scores(p, g)
        t_single = (time.perf_counter() - t0) / len(pairs)

    ref_vec = reference_vectors(ref)
    order = [r["unique_id"] for r in ours.per_sample]
    assert sorted(order) == sorted(ref["ids"])
    ours_vec = ours.scores[[order.index(u) for u in ref["ids"]]]
    diffs = {}
    for i, key in enumerate(SCALAR_KEYS):
        diffs[key] = float(np.max(np.abs(ours_vec[:, i] - ref_vec[:, i])))
    off = len(SCALAR_KEYS)
    for j, key in enumerate(CURVE_KEYS):
        sl = slice(off + j * NUM_THRESHOLDS, off + (j + 1) * NUM_THRESHOLDS)
        diffs[f"{key} curve"] = float(np.max(np.abs(ours_vec[:, sl] - ref_vec[:, sl])))
    gt_cls = [u.split("_", 1)[1] for u in ref["ids"]]
    correct = np.array([p == g for p, g in zip(ref["pred_class"], gt_cls, strict=True)])
    ref_summary = summarize(ref_vec, correct)
    for key in METRIC_KEYS:
        diffs[f"reported {key}"] = abs(ours.metrics[key] - ref_summary[key])
    return {
        "size": f"{w}x{h}",
        "n": n,
        "workers": workers,
        "reference_per_s": n / t_ref,
        "ovcamo_per_s": n / t_ours,
        "ratio": t_ref / t_ours,
        "ovcamo_single_process_ms": 1000 * t_single,
        "reference_ms": 1000 * t_ref / n,
        "reference_cpu_ms": 1000 * c_ref / n,
        "ovcamo_cpu_ms": 1000 * c_ours / n,
        "cpu_ratio": c_ref / c_ours,
        "max_abs_diff": diffs,
        "cIoU": ours.metrics["cIoU"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="pairs per size")
    parser.add_argument("--sizes", default="384x384,1024x768", help="W×H list")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    for spec in args.sizes.split(","):
        w, h = (int(v) for v in spec.lower().split("x"))
        rows.append(run_size(args.n, h, w, args.workers, args.seed))

    print(
        "| size | N | reference (pairs/s) | ovcamo, "
        f"{args.workers} procs (pairs/s) | ratio | reference CPU (ms/pair) | ovcamo CPU (ms/pair) "
        "| CPU ratio | ovcamo 1 proc, compute only (ms/pair) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']} | {r['n']} | {r['reference_per_s']:.2f} | {r['ovcamo_per_s']:.2f} | "
            f"{r['ratio']:.2f}× | {r['reference_cpu_ms']:.1f} | {r['ovcamo_cpu_ms']:.1f} | "
            f"{r['cpu_ratio']:.2f}× | {r['ovcamo_single_process_ms']:.1f} |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    keys = list(rows[0]["max_abs_diff"])
    print("\n| max abs difference | " + " | ".join(r["size"] for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{r['max_abs_diff'][key]:.1e}" for r in rows) + " |")
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "args": vars(args) | {"json": str(args.json)}})


if __name__ == "__main__":
    main()
