"""``ovcamo-eval``: score a folder of ``[<pred class>]<unique_id>.png`` predictions (or a checkpoint's)
with the class-aware OVCOS metrics (OVCamo, ECCV 2024; docs/evaluation.md).

Unlike the official script, every inconsistency between the prediction folder and the dataset is an
error that lists all offending files: a folder, a name without the ``[class]`` prefix, a non-PNG or
non-8-bit file, an unreadable prediction or GT mask (each named as such), an unknown predicted
class, a prediction for no GT sample, a GT sample without a prediction (unless ``allow_missing``;
missing samples are then left out of the averages, as the official script does, and listed in the
results), a size that differs from the GT (unless ``resize_to_gt``) and a GT mask without a
foreground pixel (unless ``allow_empty_gt``). ``out_dir`` is checked before any work; results are
computed completely before anything is written, and every file is written atomically.

Beside the official class-aware numbers, ``metrics.json`` holds ``diagnostics`` outside the
protocol (the six metrics without the class check and the classification accuracy), so that a bad
mask can be told from a wrong class.

Scoring a folder needs numpy, PIL, OpenCV and scipy only; this module never imports torch
(``checkpoint=`` imports the model code when it predicts). Scoring runs in a process pool whose
workers never hold torch either: they are forked from this process while it has not loaded torch,
and otherwise come from a forkserver that imports only this module.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing as mp
import os
import re
import sys
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ovcamo.data.config import resolve_data_paths
from ovcamo.data.io import (
    PathEscapeError,
    atomic_write_json,
    atomic_write_text,
    link_problem,
    open_image,
    out_dir_problem,
    safe_join,
)
from ovcamo.data.ovcamo_format import (
    DataPaths,
    DatasetFormatError,
    DatasetValidationError,
    Split,
    load_class_info,
    load_sample_info,
    resolve_records,
)
from ovcamo.data.samples import holdout_split
from ovcamo.metrics.functional import sample_scores
from ovcamo.metrics.summary import (
    DIAGNOSTICS_NOTE,
    METRIC_KEYS,
    PER_SAMPLE_COLUMNS,
    per_sample_rows,
    split_diagnostics,
    summarize,
)
from ovcamo.metrics.tables import (
    diagnostics_table,
    hard_subset,
    paper_table,
    per_class_csv,
    per_class_table,
)

#: ``[<pred class>]<unique_id>.png``; the class is everything up to the first ``]``, as officially.
PRED_NAME = re.compile(r"^\[(?P<cls>[^\]]*)\](?P<uid>.+)$")
#: PIL modes of 8-bit PNGs; colour ones are converted to gray as the official reader does.
_EIGHT_BIT_MODES = {"L": "gray", "P": "palette", "RGB": "RGB", "RGBA": "RGBA", "LA": "gray+alpha"}
_MAX_LISTED = 20


class EvaluationError(ValueError):
    """The prediction folder and the dataset do not fit together; the message lists every problem."""


@dataclass(frozen=True)
class _Task:
    unique_id: str
    pred_path: str
    mask_path: str
    resize: bool
    allow_empty_gt: bool = False


_FOLDER = "folder inside the prediction folder (predictions are PNG files directly in it)"
_BROKEN_LINK = "symbolic link to no file (remove or repair it)"
_UNREADABLE_PRED = "unreadable prediction"
_UNREADABLE_GT = "unreadable GT mask"
_SIZE_DIFFERS = "prediction size differs from the GT (resize_to_gt=true resizes)"
_EMPTY_GT = (
    "GT mask without a foreground pixel (IoU and F-measure are 0/0 on it; fix the mask, remove "
    "the sample from sample_info.json, or set allow_empty_gt=true to score it by convention)"
)


@dataclass
class EvaluationResult:
    """Everything :func:`write_results` writes.

    ``metrics``: official keys and paper aliases over the scored samples; ``diagnostics``: the
    class-agnostic ``agnostic_*`` numbers and ``class_accuracy`` (not the official protocol);
    ``per_class``: rows of :func:`ovcamo.metrics.per_class_table`; ``hard``:
    :func:`ovcamo.metrics.hard_subset`; ``per_sample``: :func:`ovcamo.metrics.per_sample_rows`;
    ``missing``: GT ids without a prediction (only with ``allow_missing``); ``resized``: ids whose
    prediction was resized to the GT size; ``scores``: raw float64 ``(N, SCORE_LENGTH)`` score
    vectors in ``per_sample`` order (curves included, before the class check) and ``correct``:
    bool ``(N,)``.
    """

    metrics: dict[str, float]
    diagnostics: dict[str, float]
    per_class: list[dict[str, Any]]
    hard: dict[str, Any]
    per_sample: list[dict[str, Any]]
    split: str
    pred_dir: str
    num_samples: int
    missing: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None
    correct: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        return {
            "metrics": self.metrics,
            "diagnostics": {**self.diagnostics, "note": DIAGNOSTICS_NOTE},
            "num_samples": self.num_samples,
            "split": self.split,
            "pred_dir": self.pred_dir,
            "missing": self.missing,
            "resized": self.resized,
            "ignored": self.ignored,
            "hard": {
                k: self.hard[k]
                for k in ("source", "classes", "num_samples", "metrics", "diagnostics")
            },
        }


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}"


def _raise_if(problems: dict[str, list[str]], what: str | Path) -> None:
    if any(problems.values()):
        listed = "; ".join(_listing(k, v) for k, v in problems.items() if v)
        raise EvaluationError(f"cannot evaluate {what}: {listed}")


def _gt_masks(
    paths: DataPaths, split: Split, unique_ids: Iterable[str] | None
) -> tuple[dict[str, tuple[str, Path]], set[str], list[str]]:
    """GT of the split: ``{unique_id: (class, mask path)}`` in sample_info order, the split's ids
    before subsetting, and the class names of the whole dataset ordered by id."""
    try:
        classes = load_class_info(paths.class_info)
        samples = load_sample_info(paths.sample_info)
    except (FileNotFoundError, DatasetFormatError) as e:
        raise EvaluationError(str(e)) from e
    split_classes = {c.name for c in classes if c.split == split}
    gt: dict[str, tuple[str, Path]] = {}
    problems: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        if s.base_class not in split_classes:
            continue
        if s.unique_id in gt:
            problems["unique_id listed twice in sample_info"].append(s.unique_id)
            continue
        try:
            gt[s.unique_id] = (s.base_class, safe_join(paths.mask_dir(split), s.mask_name))
        except PathEscapeError as e:
            problems["unique_id escaping the mask folder"].append(str(e))
    split_ids = set(gt)
    if unique_ids is not None:
        wanted = list(unique_ids)
        problems[f"requested unique_id not in the {split} split"] = [
            u for u in wanted if u not in gt
        ]
        keep = set(wanted)
        gt = {u: v for u, v in gt.items() if u in keep}
    missing_masks = [link_problem(p) or str(p) for _, p in gt.values() if not p.is_file()]
    problems["GT mask file missing"] = missing_masks
    _raise_if(problems, f"against {paths.sample_info}")
    names = [c.name for c in sorted(classes, key=lambda c: c.id)]
    return gt, split_ids, names


def _read_prediction(path: str) -> np.ndarray:
    with open_image(path) as im:
        im.load()
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8)


def _read_gt(path: str) -> np.ndarray:
    with open_image(path) as im:
        im.load()
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    return arr > 0


_Problem = tuple[str, str]


def _score_chunk(
    tasks: Sequence[_Task],
) -> list[tuple[str, np.ndarray | None, list[_Problem], bool]]:
    """Worker: read, check and score a chunk.

    Returns ``(unique_id, scores or None, [(kind, detail), ...], resized)`` per task.
    """
    cv2.setNumThreads(1)
    out = []
    for t in tasks:
        problems: list[_Problem] = []
        try:
            pred = _read_prediction(t.pred_path)
        except (OSError, ValueError, SyntaxError) as e:
            problems.append((_UNREADABLE_PRED, f"{t.pred_path} ({e})"))
        try:
            gt = _read_gt(t.mask_path)
            if not t.allow_empty_gt and not gt.any():
                problems.append((_EMPTY_GT, t.mask_path))
        except (OSError, ValueError, SyntaxError) as e:
            problems.append((_UNREADABLE_GT, f"{t.mask_path} ({e})"))
        if problems:
            out.append((t.unique_id, None, problems, False))
            continue
        resized = pred.shape != gt.shape
        if resized:
            if not t.resize:
                problem = (_SIZE_DIFFERS, f"{t.pred_path} ({pred.shape} vs GT {gt.shape})")
                out.append((t.unique_id, None, [problem], False))
                continue
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        out.append((t.unique_id, sample_scores(pred, gt).to_vector(), [], resized))
    return out


def _chunks(tasks: Sequence[_Task], n: int) -> list[list[_Task]]:
    size = max(1, min(32, -(-len(tasks) // max(1, 4 * n))))
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]


def scoring_context() -> mp.context.BaseContext:
    """How scoring workers start; by construction none of them holds torch.

    A fork is cheapest (the child has this module already) and safe while this process has not
    loaded torch and runs no other thread. A process that has (it predicted, or its caller uses
    torch) could hand a child a lock held by one of torch's threads, and the child would hang; its
    workers come from a forkserver that preloads only this module, which imports no torch.
    """
    methods = mp.get_all_start_methods()
    if "fork" in methods and "torch" not in sys.modules and threading.active_count() == 1:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def _run_pool(
    tasks: Sequence[_Task], num_workers: int
) -> list[tuple[str, Any, list[_Problem], bool]]:
    if num_workers <= 1 or len(tasks) < 2:
        return _score_chunk(tasks)
    ctx = scoring_context()
    results: list[tuple[str, Any, list[_Problem], bool]] = []
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        for part in pool.map(_score_chunk, _chunks(tasks, num_workers)):
            results.extend(part)
    return results


def score_prediction_dir(
    pred_dir: str | os.PathLike,
    paths: DataPaths,
    *,
    split: Split = "test",
    unique_ids: Iterable[str] | None = None,
    allow_missing: bool = False,
    resize_to_gt: bool = False,
    allow_empty_gt: bool = False,
    reference: str | os.PathLike | None = None,
    num_workers: int = 2,
) -> EvaluationResult:
    """Score ``pred_dir`` against the GT masks of ``split`` (only ``unique_ids`` when given).

    Predictions for samples of the split outside ``unique_ids`` are ignored (and listed); a
    prediction for an id outside the split is an error. ``reference``: a reference run's
    ``per_class.csv`` that fixes the hard classes. ``num_workers`` scoring processes (see
    :func:`scoring_context`). ``allow_empty_gt``: score GT masks without a foreground pixel by the
    metrics' conventions instead of refusing them. Raises :class:`EvaluationError` listing every
    problem; nothing is written here (see
    :func:`write_results`).
    """
    if split not in ("train", "test"):
        raise EvaluationError(f"split must be 'train' or 'test', got {split!r}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder not found: {pred_dir}")
    gt, split_ids, class_names = _gt_masks(paths, split, unique_ids)
    if not gt:
        subset = " among the requested unique_ids" if unique_ids is not None else ""
        raise EvaluationError(f"no GT sample of the {split} split to score{subset}")
    known_classes = set(class_names)

    problems: dict[str, list[str]] = {
        _FOLDER: [],
        _BROKEN_LINK: [],
        "file name without the [<class>] prefix": [],
        "not a .png file": [],
        "not an 8-bit PNG": [],
        "unknown predicted class": [],
        "prediction for no GT sample": [],
        "two predictions for one sample": [],
        "GT sample without prediction": [],
        _SIZE_DIFFERS: [],
        _UNREADABLE_PRED: [],
        _UNREADABLE_GT: [],
    }
    preds: dict[str, tuple[str, Path]] = {}
    ignored: list[str] = []
    # Dot-files are temporaries of atomic writers, never predictions.
    entries = sorted(p for p in pred_dir.iterdir() if not p.name.startswith("."))
    for p in entries:
        if p.is_dir():
            problems[_FOLDER].append(p.name)
            continue
        if problem := link_problem(p):
            problems[_BROKEN_LINK].append(problem)
            continue
        m = PRED_NAME.match(p.name)
        if not p.is_file() or m is None:
            problems["file name without the [<class>] prefix"].append(p.name)
            continue
        stem, ext = os.path.splitext(m["uid"])
        if ext.lower() != ".png":
            problems["not a .png file"].append(p.name)
            continue
        cls = m["cls"]
        if cls not in known_classes:
            problems["unknown predicted class"].append(p.name)
            continue
        if stem not in gt:
            if stem in split_ids:
                ignored.append(p.name)
            else:
                problems["prediction for no GT sample"].append(p.name)
            continue
        if stem in preds:
            problems["two predictions for one sample"].append(f"{preds[stem][1].name} / {p.name}")
            continue
        preds[stem] = (cls, p)
    missing = [u for u in gt if u not in preds]
    if not allow_missing:
        problems["GT sample without prediction"] = missing

    for uid, (_, p) in preds.items():
        try:
            with open_image(p) as im:
                mode, size = im.mode, im.size
                fmt = im.format
        except (OSError, ValueError, SyntaxError) as e:
            problems[_UNREADABLE_PRED].append(f"{p} ({e})")
            continue
        if fmt != "PNG":
            problems["not a .png file"].append(f"{p.name} (contains {fmt})")
        elif mode not in _EIGHT_BIT_MODES:
            problems["not an 8-bit PNG"].append(f"{p.name} (mode {mode})")
        elif not resize_to_gt:
            try:
                with open_image(gt[uid][1]) as gim:
                    gt_size = gim.size
            except (OSError, ValueError, SyntaxError) as e:
                problems[_UNREADABLE_GT].append(f"{gt[uid][1]} ({e})")
                continue
            if gt_size != size:
                problems[_SIZE_DIFFERS].append(
                    f"{p.name} ({size[1]}×{size[0]} vs GT {gt_size[1]}×{gt_size[0]})"
                )
    _raise_if(problems, pred_dir)
    if not preds:
        raise EvaluationError(f"cannot evaluate {pred_dir}: no prediction matches a GT sample")

    order = [u for u in gt if u in preds]
    tasks = [_Task(u, str(preds[u][1]), str(gt[u][1]), resize_to_gt, allow_empty_gt) for u in order]
    scored = {uid: (vec, err, rs) for uid, vec, err, rs in _run_pool(tasks, num_workers)}
    failed: dict[str, list[str]] = defaultdict(list)
    for _, errs, _ in scored.values():
        for kind, detail in errs:
            failed[kind].append(detail)
    _raise_if(failed, pred_dir)
    resized = [u for u in order if scored[u][2]]

    scores = np.stack([scored[u][0] for u in order])
    records = [(u, preds[u][0], gt[u][0]) for u in order]
    correct = np.array([pc == gc for _, pc, gc in records], dtype=bool)
    metrics, diagnostics = split_diagnostics(summarize(scores, correct))
    per_class = per_class_table(scores, correct, records, class_order=class_names)
    try:
        hard = hard_subset(scores, correct, records, per_class, reference=reference)
    except (FileNotFoundError, ValueError) as e:
        raise EvaluationError(f"reference per-class table: {e}") from e
    return EvaluationResult(
        metrics=metrics,
        diagnostics=diagnostics,
        per_class=per_class,
        hard=hard,
        per_sample=per_sample_rows(scores, correct, records),
        split=split,
        pred_dir=str(pred_dir),
        num_samples=len(order),
        missing=missing if allow_missing else [],
        resized=resized,
        ignored=ignored,
        scores=scores,
        correct=correct,
    )


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in columns})
    return buf.getvalue()


def results_markdown(results: EvaluationResult) -> str:
    """``metrics.md``: the paper's table, all twelve official numbers, the diagnostics in a table of
    their own, then the caveats."""
    title = "OVCamo test" if results.split == "test" else f"{results.split} split"
    lines = [
        f"# OVCOS evaluation of `{results.pred_dir}`",
        "",
        f"{results.num_samples} samples, {len(results.per_class)} classes.",
        "",
        paper_table(results.metrics, title=title),
        "| " + " | ".join(METRIC_KEYS) + " |",
        "|" + "---:|" * len(METRIC_KEYS),
        "| " + " | ".join(f"{results.metrics[k]:.4f}" for k in METRIC_KEYS) + " |",
        "",
        "## Diagnostics: class-agnostic metrics and classification accuracy",
        "",
        DIAGNOSTICS_NOTE,
        "",
        diagnostics_table({**results.metrics, **results.diagnostics}, title=title),
        f"Hard classes ({results.hard['source']}, bottom quarter by cIoU): "
        + ", ".join(results.hard["classes"]),
        "",
        paper_table(results.hard["metrics"], title="hard classes"),
    ]
    if results.missing:
        lines += [
            f"**{len(results.missing)} GT samples had no prediction and are not in the averages** "
            "(allow_missing=true): " + ", ".join(results.missing[:_MAX_LISTED]),
            "",
        ]
    if results.resized:
        lines += [f"{len(results.resized)} predictions were resized to their GT size.", ""]
    return "\n".join(lines)


def hard_classes_markdown(results: EvaluationResult) -> str:
    """``hard_classes.md``: which classes are hard, their cIoU, and the metrics over them."""
    hard = results.hard
    rows = {r["class"]: r for r in results.per_class}
    lines = [
        f"# Hard classes (bottom quarter by cIoU of {hard['source']})",
        "",
        f"{len(hard['classes'])} classes, {hard['num_samples']} samples.",
        "",
        paper_table(hard["metrics"], title="hard classes"),
        "| class | ranking cIoU | samples | cSm | cIoU (this run) |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in hard["classes"]:
        r = rows[c]
        lines.append(
            f"| {c} | {hard['class_ciou'][c]:.4f} | {r['num_samples']} | {r['sm']:.4f} | "
            f"{r['avgiou']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(results: EvaluationResult, out_dir: str | os.PathLike) -> Path:
    """Write ``metrics.json``, ``metrics.md``, ``per_class.csv``, ``per_sample.csv``,
    ``hard_classes.md`` and ``hard_classes.csv`` into ``out_dir``, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "per_class.csv": per_class_csv(results.per_class),
        "per_sample.csv": _csv(results.per_sample, PER_SAMPLE_COLUMNS),
        "hard_classes.csv": _csv(
            [
                {"class": c, "ranking_ciou": results.hard["class_ciou"][c]}
                for c in results.hard["classes"]
            ],
            ("class", "ranking_ciou"),
        ),
        "hard_classes.md": hard_classes_markdown(results),
        "metrics.md": results_markdown(results),
    }
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    # metrics.json last: a reader that finds a fresh metrics.json finds the matching tables.
    atomic_write_json(out / "metrics.json", results.summary())
    return out


def _holdout_ids(cfg: Any, paths: DataPaths) -> list[str]:
    """Ids of the held-out base-validation part of the train split, as the dataset builds it."""
    try:
        records, _ = resolve_records(paths, "train", strict=bool(cfg.data.get("strict", False)))
    except (FileNotFoundError, DatasetFormatError, DatasetValidationError) as e:
        raise EvaluationError(str(e)) from e
    _, held = holdout_split(
        records,
        float(cfg.data.get("holdout_fraction", 0.0)),
        int(cfg.data.get("holdout_seed", 0)),
    )
    return [r.unique_id for r in held]


def check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that results could not be written into; called before any work."""
    problem = out_dir_problem(out_dir)
    if problem is not None:
        raise EvaluationError(
            f"out_dir={out_dir}: {problem}, and the results are a folder of files (metrics.json, "
            "metrics.md, per_class.csv, ...); choose another out_dir"
        )


def main(cfg: Any) -> EvaluationResult:
    """Entry point of ``ovcamo-eval`` (config ``ovcamo/conf/eval.yaml``).

    Keys: ``pred_dir`` or ``checkpoint`` (predictions are then written first by
    :func:`ovcamo.engine.predict.predict_to_dir`), ``out_dir``, ``split`` and ``part`` (``val``: the
    held-out base-validation part of the train split), ``allow_missing``, ``resize_to_gt``,
    ``allow_empty_gt``, ``reference``, ``num_workers``, ``data.*``. Bad input (``out_dir`` included,
    checked before any work): message on stderr, exit status 2, nothing written.
    """
    split = str(cfg.get("split", "test"))
    part = str(cfg.get("part", "all"))
    try:
        if part not in ("all", "val") or (part == "val" and split != "train"):
            raise EvaluationError(
                f"part={part!r} with split={split!r}: use part=val with split=train"
            )
        try:
            paths = resolve_data_paths(cfg.data, cfg.get("cache_dir"))
        except (KeyError, FileNotFoundError, DatasetFormatError) as e:
            raise EvaluationError(f"dataset config: {e}") from e
        if cfg.get("checkpoint"):
            # Imported here: they pull in the model code, which scoring a folder never needs.
            from ovcamo.checkpoint import CheckpointError
            from ovcamo.engine.predict import predict_to_dir

            if not cfg.get("out_dir"):
                raise EvaluationError("checkpoint= needs out_dir= (predictions are written there)")
            out_dir = Path(str(cfg.out_dir))
            check_out_dir(out_dir)
            try:
                pred_dir = predict_to_dir(cfg, split=split, part=part)
            except (
                CheckpointError,
                DatasetFormatError,
                DatasetValidationError,
                FileNotFoundError,
            ) as e:
                raise EvaluationError(str(e)) from e
        elif cfg.get("pred_dir"):
            pred_dir = Path(str(cfg.pred_dir))
            out_dir = Path(str(cfg.out_dir)) if cfg.get("out_dir") else pred_dir.parent / "eval"
            check_out_dir(out_dir)
        else:
            raise EvaluationError("give pred_dir=<folder of [class]uid.png> or checkpoint=<run>")
        results = score_prediction_dir(
            pred_dir,
            paths,
            split=split,  # type: ignore[arg-type]
            unique_ids=_holdout_ids(cfg, paths) if part == "val" else None,
            allow_missing=bool(cfg.get("allow_missing", False)),
            resize_to_gt=bool(cfg.get("resize_to_gt", False)),
            allow_empty_gt=bool(cfg.get("allow_empty_gt", False)),
            reference=cfg.get("reference") or None,
            num_workers=int(cfg.get("num_workers", 2)),
        )
    except EvaluationError as e:
        print(f"ovcamo-eval: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    write_results(results, out_dir)
    if cfg.get("figures", True):
        # Imported here: matplotlib is only needed once results exist.
        from ovcamo.engine.visualize import write_eval_figures

        write_eval_figures(results, paths, out_dir)
    print(paper_table(results.metrics, title=f"{results.num_samples} samples"))
    print(f"results written to {out_dir}")
    print(json.dumps({k: round(v, 4) for k, v in results.metrics.items()}))
    return results
