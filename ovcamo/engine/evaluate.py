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
    reduce_rows,
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
from ovcamo.report.confusion import (
    Confusion,
    confusion_csv,
    confusion_markdown,
    confusion_matrix,
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
    class_names: list[str] = field(default_factory=list)

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


@dataclass
class _Pairs:
    """Predictions matched to GT masks, in GT order: ``pred`` and ``gt`` hold ``(class, path)``
    per sample name (class ``""`` in the class-agnostic mode)."""

    pred: dict[str, tuple[str, Path]]
    gt: dict[str, tuple[str, Path]]
    missing: list[str]
    ignored: list[str]
    class_names: list[str]

    @property
    def order(self) -> list[str]:
        return [u for u in self.gt if u in self.pred]


def _file_problems(
    pairs: _Pairs,
    problems: dict[str, list[str]],
    resize_to_gt: bool,
    formats: Sequence[str],
    format_key: str,
) -> None:
    """Open every matched prediction (and, unless ``resize_to_gt``, its GT mask) to check its
    format (one of ``formats``, as PIL names them; else listed under ``format_key``), its 8-bit
    mode and its size; adds to ``problems``."""
    for uid in pairs.order:
        p, gt_path = pairs.pred[uid][1], pairs.gt[uid][1]
        try:
            with open_image(p) as im:
                mode, size = im.mode, im.size
                fmt = im.format
        except (OSError, ValueError, SyntaxError) as e:
            problems.setdefault(_UNREADABLE_PRED, []).append(f"{p} ({e})")
            continue
        if fmt not in formats:
            problems.setdefault(format_key, []).append(f"{p.name} (contains {fmt})")
        elif mode not in _EIGHT_BIT_MODES:
            problems.setdefault("not an 8-bit " + " or ".join(formats), []).append(
                f"{p.name} (mode {mode})"
            )
        elif not resize_to_gt:
            try:
                with open_image(gt_path) as gim:
                    gt_size = gim.size
            except (OSError, ValueError, SyntaxError) as e:
                problems.setdefault(_UNREADABLE_GT, []).append(f"{gt_path} ({e})")
                continue
            if gt_size != size:
                problems.setdefault(_SIZE_DIFFERS, []).append(
                    f"{p.name} ({size[1]}×{size[0]} vs GT {gt_size[1]}×{gt_size[0]})"
                )


def _class_aware_pairs(
    pred_dir: Path,
    paths: DataPaths,
    split: Split,
    unique_ids: Iterable[str] | None,
    allow_missing: bool,
    resize_to_gt: bool,
) -> _Pairs:
    """Match ``[<class>]<uid>.png`` predictions to the split's GT; raise on every problem."""
    if split not in ("train", "test"):
        raise EvaluationError(f"split must be 'train' or 'test', got {split!r}")
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
    pairs = _Pairs(preds, gt, missing if allow_missing else [], ignored, class_names)
    _file_problems(pairs, problems, resize_to_gt, ("PNG",), "not a .png file")
    _raise_if(problems, pred_dir)
    if not preds:
        raise EvaluationError(f"cannot evaluate {pred_dir}: no prediction matches a GT sample")
    return pairs


def _score_pairs(
    pairs: _Pairs, pred_dir: Path, resize_to_gt: bool, allow_empty_gt: bool, num_workers: int
) -> tuple[list[str], np.ndarray, list[str]]:
    """Score matched pairs: ``(names, float64 (N, SCORE_LENGTH) raw scores, resized names)``."""
    order = pairs.order
    tasks = [
        _Task(u, str(pairs.pred[u][1]), str(pairs.gt[u][1]), resize_to_gt, allow_empty_gt)
        for u in order
    ]
    scored = {uid: (vec, err, rs) for uid, vec, err, rs in _run_pool(tasks, num_workers)}
    failed: dict[str, list[str]] = defaultdict(list)
    for _, errs, _ in scored.values():
        for kind, detail in errs:
            failed[kind].append(detail)
    _raise_if(failed, pred_dir)
    resized = [u for u in order if scored[u][2]]
    return order, np.stack([scored[u][0] for u in order]), resized


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
    hard_ranking: str | os.PathLike | Sequence[str] | None = None,
    num_workers: int = 2,
) -> EvaluationResult:
    """Score ``pred_dir`` against the GT masks of ``split`` (only ``unique_ids`` when given).

    Predictions for samples of the split outside ``unique_ids`` are ignored (and listed); a
    prediction for an id outside the split is an error. ``hard_ranking``: OVCoser's class
    ranking, hardest first (names, or a text file of one per line), which fixes the hard classes
    as the paper does; ``reference``: a reference run's ``per_class.csv`` that does instead.
    ``num_workers`` scoring processes (see
    :func:`scoring_context`). ``allow_empty_gt``: score GT masks without a foreground pixel by the
    metrics' conventions instead of refusing them. Raises :class:`EvaluationError` listing every
    problem; nothing is written here (see
    :func:`write_results`).
    """
    pred_dir = Path(pred_dir)
    pairs = _class_aware_pairs(pred_dir, paths, split, unique_ids, allow_missing, resize_to_gt)
    order, scores, resized = _score_pairs(
        pairs, pred_dir, resize_to_gt, allow_empty_gt, num_workers
    )
    records = [(u, pairs.pred[u][0], pairs.gt[u][0]) for u in order]
    correct = np.array([pc == gc for _, pc, gc in records], dtype=bool)
    metrics, diagnostics = split_diagnostics(summarize(scores, correct))
    per_class = per_class_table(scores, correct, records, class_order=pairs.class_names)
    try:
        hard = hard_subset(
            scores, correct, records, per_class, reference=reference, ranking=hard_ranking
        )
    except (FileNotFoundError, ValueError) as e:
        key = "hard_ranking" if hard_ranking is not None else "reference"
        raise EvaluationError(f"{key} (the hard-class ranking): {e}") from e
    return EvaluationResult(
        metrics=metrics,
        diagnostics=diagnostics,
        per_class=per_class,
        hard=hard,
        per_sample=per_sample_rows(scores, correct, records),
        split=split,
        pred_dir=str(pred_dir),
        num_samples=len(order),
        missing=pairs.missing,
        resized=resized,
        ignored=pairs.ignored,
        scores=scores,
        correct=correct,
        class_names=pairs.class_names,
    )


# ---------------------------------------------------------------- class-agnostic (COD) sets

#: Prediction files of the class-agnostic mode (COD10K, CAMO and NC4K results come as either).
AGNOSTIC_PRED_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Column titles of the class-agnostic table: the standard COD set, in METRIC_KEYS order.
AGNOSTIC_TITLES = {
    "sm": "Sm",
    "wfm": "Fωβ",
    "mae": "MAE",
    "adpfm": "adpFβ",
    "avgfm": "meanFβ",
    "maxfm": "maxFβ",
    "adpem": "adpEm",
    "avgem": "meanEm",
    "maxem": "maxEm",
    "adpiou": "adpIoU",
    "avgiou": "IoU",
    "maxiou": "maxIoU",
}
#: Columns of the class-agnostic ``per_sample.csv``.
AGNOSTIC_SAMPLE_COLUMNS = ("name", *METRIC_KEYS)
_MATCH_HINT = (
    "Predictions and GT masks are matched by file name without its extension (<name>.png or "
    "<name>.jpg against <name>.png); allow_missing=true scores only the GT masks that have a "
    "prediction."
)


@dataclass
class AgnosticResult:
    """A class-agnostic evaluation: ``metrics`` has the twelve :data:`METRIC_KEYS` (``avgiou`` is
    the IoU, the mean of the averaged curve); ``per_sample``: rows of
    :data:`AGNOSTIC_SAMPLE_COLUMNS`; ``scores``: float64 ``(N, SCORE_LENGTH)`` in row order."""

    metrics: dict[str, float]
    per_sample: list[dict[str, Any]]
    pred_dir: str
    gt_dir: str
    num_samples: int
    missing: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        return {
            "mode": "class-agnostic",
            "metrics": self.metrics,
            "num_samples": self.num_samples,
            "pred_dir": self.pred_dir,
            "gt_dir": self.gt_dir,
            "missing": self.missing,
            "resized": self.resized,
        }


def _agnostic_pairs(
    pred_dir: Path, gt_dir: Path, allow_missing: bool, resize_to_gt: bool
) -> _Pairs:
    """Match ``<name>.{png,jpg}`` predictions to ``<name>.png`` GT masks; raise on every problem,
    naming the files present on one side only."""
    for what, folder in (("prediction", pred_dir), ("GT mask", gt_dir)):
        if not folder.is_dir():
            raise EvaluationError(f"{what} folder not found: {folder}")
    problems: dict[str, list[str]] = {
        f"folder inside the GT folder {gt_dir}": [],
        f"GT file that is not a .png mask in {gt_dir}": [],
        _FOLDER: [],
        "not a .png or .jpg file": [],
        "two predictions for one sample": [],
        f"prediction without a GT mask in {gt_dir}": [],
        f"GT mask without a prediction in {pred_dir}": [],
    }
    gt: dict[str, tuple[str, Path]] = {}
    for p in sorted(q for q in gt_dir.iterdir() if not q.name.startswith(".")):
        stem, ext = os.path.splitext(p.name)
        if p.is_dir():
            problems[f"folder inside the GT folder {gt_dir}"].append(p.name)
        elif ext.lower() != ".png":
            problems[f"GT file that is not a .png mask in {gt_dir}"].append(p.name)
        else:
            gt[stem] = ("", p)
    preds: dict[str, tuple[str, Path]] = {}
    for p in sorted(q for q in pred_dir.iterdir() if not q.name.startswith(".")):
        stem, ext = os.path.splitext(p.name)
        if p.is_dir():
            problems[_FOLDER].append(p.name)
        elif ext.lower() not in AGNOSTIC_PRED_SUFFIXES:
            problems["not a .png or .jpg file"].append(p.name)
        elif stem in preds:
            problems["two predictions for one sample"].append(f"{preds[stem][1].name} / {p.name}")
        elif stem not in gt:
            problems[f"prediction without a GT mask in {gt_dir}"].append(p.name)
        else:
            preds[stem] = ("", p)
    missing = [gt[u][1].name for u in gt if u not in preds]
    if not allow_missing:
        problems[f"GT mask without a prediction in {pred_dir}"] = missing
    pairs = _Pairs(preds, gt, missing if allow_missing else [], [], [])
    _file_problems(pairs, problems, resize_to_gt, ("PNG", "JPEG"), "not a .png or .jpg file")
    if any(problems.values()):
        try:
            _raise_if(problems, f"{pred_dir} against {gt_dir}")
        except EvaluationError as e:
            raise EvaluationError(f"{e}\n{_MATCH_HINT}") from None
    if not preds:
        raise EvaluationError(f"cannot evaluate {pred_dir}: no GT mask in {gt_dir}")
    return pairs


def score_agnostic_dirs(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    allow_missing: bool = False,
    resize_to_gt: bool = False,
    allow_empty_gt: bool = False,
    num_workers: int = 2,
) -> AgnosticResult:
    """Score a class-agnostic COD set (COD10K, CAMO, NC4K layouts): ``pred_dir`` holds
    ``<name>.png`` or ``<name>.jpg`` predictions, ``gt_dir`` the ``<name>.png`` masks.

    Every sample is scored by :func:`ovcamo.metrics.functional.sample_scores` and averaged as in
    the class-aware mode with every class right, which gives pysodmetrics' dataset numbers. A name
    on one side only is an error listing them (``allow_missing``: GT masks without a prediction
    are left out and listed instead). Raises :class:`EvaluationError`; writes nothing.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs = _agnostic_pairs(pred_dir, gt_dir, allow_missing, resize_to_gt)
    order, scores, resized = _score_pairs(
        pairs, pred_dir, resize_to_gt, allow_empty_gt, num_workers
    )
    metrics = {k: v for k, v in summarize(scores).items() if k in METRIC_KEYS}
    rows = reduce_rows(scores)
    per_sample = [
        {"name": u, **{k: float(rows[k][i]) for k in METRIC_KEYS}} for i, u in enumerate(order)
    ]
    return AgnosticResult(
        metrics=metrics,
        per_sample=per_sample,
        pred_dir=str(pred_dir),
        gt_dir=str(gt_dir),
        num_samples=len(order),
        missing=pairs.missing,
        resized=resized,
        scores=scores,
    )


def agnostic_markdown(results: AgnosticResult) -> str:
    """``metrics.md`` of the class-agnostic mode: the standard COD table, then every key."""
    lines = [
        f"# Class-agnostic COD evaluation of `{results.pred_dir}`",
        "",
        f"{results.num_samples} samples against `{results.gt_dir}`; no class check.",
        "",
        "| " + " | ".join(AGNOSTIC_TITLES.values()) + " |",
        "|" + "---:|" * len(AGNOSTIC_TITLES),
        "| " + " | ".join(f"{results.metrics[k]:.4f}" for k in AGNOSTIC_TITLES) + " |",
        "",
        "IoU is the mean of the averaged 256-threshold curve; maxIoU its maximum, adpIoU at the "
        "adaptive threshold. Keys in metrics.json: " + ", ".join(METRIC_KEYS) + ".",
        "",
    ]
    return "\n".join(lines + _caveats(results.missing, results.resized, "GT masks"))


def _caveats(missing: Sequence[str], resized: Sequence[str], what: str) -> list[str]:
    """The lines ``metrics.md`` ends with when ``allow_missing`` or ``resize_to_gt`` took effect."""
    lines: list[str] = []
    if missing:
        lines += [
            f"**{len(missing)} {what} had no prediction and are not in the averages** "
            "(allow_missing=true): " + ", ".join(missing[:_MAX_LISTED]),
            "",
        ]
    if resized:
        lines += [f"{len(resized)} predictions were resized to their GT size.", ""]
    return lines


def write_agnostic_results(results: AgnosticResult, out_dir: str | os.PathLike) -> Path:
    """Write ``metrics.md``, ``per_sample.csv`` and then ``metrics.json`` into ``out_dir``, each
    atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "per_sample.csv", _csv(results.per_sample, AGNOSTIC_SAMPLE_COLUMNS))
    atomic_write_text(out / "metrics.md", agnostic_markdown(results))
    atomic_write_json(out / "metrics.json", results.summary())
    return out


def _csv_value(value: float | None) -> float | str:
    return "" if value is None else value


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
        f"Hard classes ({len(results.hard['classes'])}, the hardest quarter; "
        f"{results.hard['source']}): " + ", ".join(results.hard["classes"]),
        "",
        paper_table(results.hard["metrics"], title="hard classes"),
    ]
    return "\n".join(lines + _caveats(results.missing, results.resized, "GT samples"))


def _ranking_ciou(value: float | None) -> str:
    """A ranking's cIoU for a table; "—" where the ranking is a list of names (OVCoser's)."""
    return "—" if value is None else f"{value:.4f}"


def hard_classes_markdown(results: EvaluationResult) -> str:
    """``hard_classes.md``: which classes are hard, their cIoU, and the metrics over them."""
    hard = results.hard
    rows = {r["class"]: r for r in results.per_class}
    lines = [
        f"# Hard classes (the hardest quarter; {hard['source']})",
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
            f"| {c} | {_ranking_ciou(hard['class_ciou'][c])} | {r['num_samples']} | "
            f"{r['sm']:.4f} | {r['avgiou']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def result_confusion(results: EvaluationResult) -> Confusion:
    """Predicted vs GT class of the scored samples, labels in the dataset's class order."""
    pairs = ((r["gt_class"], r["pred_class"]) for r in results.per_sample)
    return confusion_matrix(pairs, results.class_names)


def write_results(results: EvaluationResult, out_dir: str | os.PathLike) -> Path:
    """Write ``metrics.json``, ``metrics.md``, ``per_class.csv``, ``per_sample.csv``,
    ``hard_classes.md``, ``hard_classes.csv`` and ``confusion.{csv,md}`` (predicted vs GT class)
    into ``out_dir``, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    confusion = result_confusion(results)
    texts = {
        "per_class.csv": per_class_csv(results.per_class),
        "per_sample.csv": _csv(results.per_sample, PER_SAMPLE_COLUMNS),
        "hard_classes.csv": _csv(
            [
                {"class": c, "ranking_ciou": _csv_value(results.hard["class_ciou"][c])}
                for c in results.hard["classes"]
            ],
            ("class", "ranking_ciou"),
        ),
        "hard_classes.md": hard_classes_markdown(results),
        "confusion.csv": confusion_csv(confusion),
        "confusion.md": "# Predicted vs GT class\n\n"
        f"{confusion.total} samples; rows are GT classes, columns predicted classes.\n\n"
        + confusion_markdown(confusion),
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


def _hard_ranking(value: Any) -> str | list[str] | None:
    """``hard_ranking``: null, a text file's path, or a list of class names."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):  # a list, or Hydra's ListConfig
        return [str(v) for v in value]
    raise EvaluationError(
        f"hard_ranking={value!r}: give a list of class names, hardest first, or a text file "
        "with one name per line"
    )


def check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that results could not be written into; called before any work."""
    problem = out_dir_problem(out_dir)
    if problem is not None:
        raise EvaluationError(
            f"out_dir={out_dir}: {problem}, and the results are a folder of files (metrics.json, "
            "metrics.md, per_class.csv, ...); choose another out_dir"
        )


def _check_passed(message: str) -> None:
    print(f"ovcamo-eval: check passed: {message}; nothing written (check=true)")


def _main_agnostic(cfg: Any, check: bool) -> AgnosticResult | None:
    """``ovcamo-eval pred_dir=… gt_dir=…``: a class-agnostic COD set."""
    if not cfg.get("pred_dir"):
        raise EvaluationError("gt_dir= needs pred_dir=<folder of <name>.png or <name>.jpg>")
    if cfg.get("checkpoint"):
        raise EvaluationError(
            "checkpoint= predicts classes from an OVCamo-format dataset; with gt_dir= give "
            "pred_dir= instead"
        )
    pred_dir, gt_dir = Path(str(cfg.pred_dir)), Path(str(cfg.gt_dir))
    out_dir = Path(str(cfg.out_dir)) if cfg.get("out_dir") else pred_dir.parent / "eval"
    check_out_dir(out_dir)
    allow_missing = bool(cfg.get("allow_missing", False))
    resize_to_gt = bool(cfg.get("resize_to_gt", False))
    if check:
        pairs = _agnostic_pairs(pred_dir, gt_dir, allow_missing, resize_to_gt)
        _check_passed(
            f"{len(pairs.order)} predictions in {pred_dir} match GT masks in {gt_dir}; results "
            f"would go to {out_dir}"
        )
        return None
    results = score_agnostic_dirs(
        pred_dir,
        gt_dir,
        allow_missing=allow_missing,
        resize_to_gt=resize_to_gt,
        allow_empty_gt=bool(cfg.get("allow_empty_gt", False)),
        num_workers=int(cfg.get("num_workers", 2)),
    )
    write_agnostic_results(results, out_dir)
    print(agnostic_markdown(results))
    print(f"results written to {out_dir}")
    print(json.dumps({k: round(v, 4) for k, v in results.metrics.items()}))
    return results


def main(cfg: Any) -> EvaluationResult | AgnosticResult | None:
    """Entry point of ``ovcamo-eval`` (config ``ovcamo/conf/eval.yaml``).

    Keys: ``pred_dir`` or ``checkpoint`` (predictions are then written first by
    :func:`ovcamo.engine.predict.predict_to_dir`), ``out_dir``, ``split`` and ``part`` (``val``: the
    held-out base-validation part of the train split), ``allow_missing``, ``resize_to_gt``,
    ``allow_empty_gt``, ``reference``, ``hard_ranking``, ``num_workers``, ``data.*``; ``gt_dir`` with ``pred_dir``
    scores a class-agnostic COD set instead (:func:`score_agnostic_dirs`); ``check=true`` validates
    the inputs, prints what would be scored and writes nothing (returns ``None``). Bad input
    (``out_dir`` included, checked before any work): message on stderr, exit status 2, nothing
    written.
    """
    check = bool(cfg.get("check", False))
    split = str(cfg.get("split", "test"))
    part = str(cfg.get("part", "all"))
    try:
        if cfg.get("gt_dir"):
            return _main_agnostic(cfg, check)
        if part not in ("all", "val") or (part == "val" and split != "train"):
            raise EvaluationError(
                f"part={part!r} with split={split!r}: use part=val with split=train"
            )
        try:
            paths = resolve_data_paths(cfg.data, cfg.get("cache_dir"))
        except (KeyError, FileNotFoundError, DatasetFormatError) as e:
            raise EvaluationError(f"dataset config: {e}") from e
        unique_ids = _holdout_ids(cfg, paths) if part == "val" else None
        if cfg.get("checkpoint"):
            # Imported here: they pull in the model code, which scoring a folder never needs.
            from ovcamo.checkpoint import CheckpointError
            from ovcamo.engine.predict import predict_to_dir
            from ovcamo.models.hub import resolve_model_dir

            if not cfg.get("out_dir"):
                raise EvaluationError("checkpoint= needs out_dir= (predictions are written there)")
            out_dir = Path(str(cfg.out_dir))
            check_out_dir(out_dir)
            if check:
                try:
                    found = resolve_model_dir(str(cfg.checkpoint))
                except FileNotFoundError as e:
                    raise EvaluationError(str(e)) from e
                gt, _, _ = _gt_masks(paths, split, unique_ids)  # type: ignore[arg-type]
                _check_passed(
                    f"checkpoint {found} would predict {len(gt)} {split} samples into "
                    f"{out_dir / 'predictions'}"
                )
                return None
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
            raise EvaluationError(
                "give pred_dir=<folder of [class]uid.png> or checkpoint=<run> (a class-agnostic "
                "COD set: pred_dir=<folder of name.png> gt_dir=<folder of name.png masks>)"
            )
        allow_missing = bool(cfg.get("allow_missing", False))
        resize_to_gt = bool(cfg.get("resize_to_gt", False))
        if check:
            pairs = _class_aware_pairs(
                pred_dir,
                paths,
                split,  # type: ignore[arg-type]
                unique_ids,
                allow_missing,
                resize_to_gt,
            )
            _check_passed(
                f"{len(pairs.order)} predictions in {pred_dir} match the {split} split's GT; "
                f"results would go to {out_dir}"
            )
            return None
        results = score_prediction_dir(
            pred_dir,
            paths,
            split=split,  # type: ignore[arg-type]
            unique_ids=unique_ids,
            allow_missing=allow_missing,
            resize_to_gt=resize_to_gt,
            allow_empty_gt=bool(cfg.get("allow_empty_gt", False)),
            reference=cfg.get("reference") or None,
            hard_ranking=_hard_ranking(cfg.get("hard_ranking")),
            num_workers=int(cfg.get("num_workers", 2)),
        )
    except EvaluationError as e:
        print(f"ovcamo-eval: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    write_results(results, out_dir)
    if cfg.get("figures", True):
        # Imported here: matplotlib is only needed once results exist.
        from ovcamo.engine.visualize import write_eval_figures
        from ovcamo.report.confusion import confusion_heatmap

        write_eval_figures(results, paths, out_dir)
        confusion_heatmap(result_confusion(results), out_dir / "confusion.png")
    print(paper_table(results.metrics, title=f"{results.num_samples} samples"))
    print(f"results written to {out_dir}")
    print(json.dumps({k: round(v, 4) for k, v in results.metrics.items()}))
    return results
