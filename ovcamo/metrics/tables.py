"""Per-class tables and the hard-class subset of an OVCOS evaluation.

The hard classes are the hardest quarter of the classes, ``floor(0.25 · n)`` of them: the 15 of
OVCamo's 61 novel classes that the BaCLIP paper analyses. Which ones is a ranking, hardest first:

- ``OVCoser ranking``: a list of class names given in order (the paper ranks by OVCoser's
  per-class cIoU, so BaCLIP and OVCoser are compared on the same classes);
- ``reference run's ranking``: a reference run's ``per_class.csv``, ranked by its cIoU;
- ``this run's own ranking``: this run's per-class cIoU, when neither is given.

Per-class numbers average over that class's samples exactly as the headline numbers average over
all samples.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovcamo.metrics.summary import (
    AGNOSTIC_KEYS,
    METRIC_KEYS,
    PAPER_ALIASES,
    split_diagnostics,
    summarize,
)

#: Columns of ``per_class.csv``: the official keys (class-aware), then two diagnostics that are not
#: part of the protocol (the class-agnostic IoU and the share of samples classified right).
PER_CLASS_COLUMNS = ("class", "num_samples", *METRIC_KEYS, "agnostic_IoU", "class_accuracy")
#: Fraction of classes that form the hard subset (floor: 15 of 61).
HARD_FRACTION = 0.25
#: ``hard_subset``'s ``source``: which ranking chose the hard classes.
OVCOSER_RANKING = "OVCoser ranking"
REFERENCE_RANKING = "reference run's ranking"
OWN_RANKING = "this run's own ranking"


def per_class_table(
    scores: np.ndarray,
    correct: np.ndarray,
    records: Sequence[tuple[str, str, str]],
    class_order: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per GT class: ``class``, ``num_samples``, the twelve official keys (class-aware) and
    the diagnostics ``agnostic_IoU`` and ``class_accuracy`` (share of samples classified right).

    ``scores``: float64 ``(N, SCORE_LENGTH)`` raw; ``correct``: bool ``(N,)``; ``records``:
    ``(unique_id, pred_class, gt_class)`` per row. Rows follow ``class_order`` (classes without
    samples are left out), else sorted by name.
    """
    gt_classes = np.array([r[2] for r in records], dtype=object)
    present = set(gt_classes.tolist())
    order = [c for c in class_order if c in present] if class_order is not None else sorted(present)
    rows = []
    for name in order:
        sel = gt_classes == name
        metrics = summarize(scores[sel], correct[sel])
        row: dict[str, Any] = {"class": name, "num_samples": int(sel.sum())}
        row.update({k: metrics[k] for k in METRIC_KEYS})
        row.update(agnostic_IoU=metrics["agnostic_IoU"], class_accuracy=metrics["class_accuracy"])
        rows.append(row)
    return rows


def per_class_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """``per_class.csv`` text for rows of :func:`per_class_table`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_CLASS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in PER_CLASS_COLUMNS})
    return buf.getvalue()


def read_class_ciou(path: str | os.PathLike) -> dict[str, float]:
    """Per-class cIoU of a reference run, from its ``per_class.csv`` (column ``avgiou`` or ``cIoU``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference per-class table not found: {path}")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        col = next((c for c in ("avgiou", "cIoU") if c in fields), None)
        if "class" not in fields or col is None:
            raise ValueError(
                f"{path}: a reference per-class table needs the columns 'class' and 'avgiou' "
                f"(or 'cIoU'); found {fields}"
            )
        out = {}
        for i, row in enumerate(reader, start=2):
            try:
                out[row["class"]] = float(row[col])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}, line {i}: {col}={row.get(col)!r} is not a number") from e
    return out


def read_class_ranking(path: str | os.PathLike) -> list[str]:
    """Class names, hardest first, from a text file with one name per line (blank lines and lines
    starting with ``#`` are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hard-class ranking not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise ValueError(f"{path}: no class name in the hard-class ranking (one name per line)")
    return names


def hard_count(num_classes: int, fraction: float = HARD_FRACTION) -> int:
    """How many classes are hard: ``floor(fraction · n)``, at least one (15 of 61)."""
    return max(1, math.floor(fraction * num_classes))


def hard_classes(
    class_ciou: Mapping[str, float],
    classes: Sequence[str] | None = None,
    fraction: float = HARD_FRACTION,
) -> list[str]:
    """The hardest ``fraction`` of classes by cIoU, hardest first (ties broken by name).

    ``class_ciou``: per-class cIoU (this run's or a reference's); ``classes``: restrict the ranking to
    these (the classes of the run being reported). The count is :func:`hard_count` of the classes
    ranked.
    """
    names = [c for c in class_ciou if classes is None or c in set(classes)]
    if not names:
        return []
    ranked = sorted(names, key=lambda c: (class_ciou[c], c))
    return ranked[: hard_count(len(ranked), fraction)]


def hard_subset(
    scores: np.ndarray,
    correct: np.ndarray,
    records: Sequence[tuple[str, str, str]],
    per_class_rows: Sequence[Mapping[str, Any]],
    reference: str | os.PathLike | Mapping[str, float] | None = None,
    ranking: str | os.PathLike | Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics over the samples of the hard classes.

    ``ranking``: OVCoser's ranking, class names hardest first (a list, or a text file of one name
    per line): the first :func:`hard_count` of this run's classes in it are hard. ``reference``: a
    reference run's ``per_class.csv`` (or ``{class: cIoU}``). Neither: this run's own cIoU.

    Returns ``{"source": OVCOSER_RANKING | REFERENCE_RANKING | OWN_RANKING, "classes": [...],
    "num_samples": n, "metrics": {official keys and aliases}, "diagnostics": {agnostic_* and
    class_accuracy}, "class_ciou": {class: cIoU used for ranking, None for a ranking of names}}``.
    """
    run_classes = [r["class"] for r in per_class_rows]
    if ranking is not None and reference is not None:
        raise ValueError("give OVCoser's ranking or a reference per-class table, not both")
    if ranking is not None:
        names = read_class_ranking(ranking) if isinstance(ranking, (str, os.PathLike)) else ranking
        present = set(run_classes)
        chosen = [c for c in dict.fromkeys(names) if c in present][: hard_count(len(run_classes))]
        ciou: dict[str, float | None] = dict.fromkeys(chosen)
        source = OVCOSER_RANKING
    else:
        if reference is None:
            ciou = {r["class"]: float(r["avgiou"]) for r in per_class_rows}
            source = OWN_RANKING
        else:
            ciou = dict(reference) if isinstance(reference, Mapping) else read_class_ciou(reference)
            source = REFERENCE_RANKING
        chosen = hard_classes(ciou, run_classes)  # type: ignore[arg-type]
    if not chosen:
        raise ValueError(
            f"the {source} shares no class with this run; run classes: {run_classes[:5]}..."
        )
    chosen_set = set(chosen)
    sel = np.array([r[2] in chosen_set for r in records], dtype=bool)
    official, diagnostics = split_diagnostics(summarize(scores[sel], correct[sel]))
    return {
        "source": source,
        "classes": chosen,
        "num_samples": int(sel.sum()),
        "metrics": official,
        "diagnostics": diagnostics,
        "class_ciou": {c: ciou[c] for c in chosen},
    }


def paper_table(metrics: Mapping[str, float], title: str = "OVCamo", digits: int = 3) -> str:
    """Markdown table of the paper's six numbers (cSm, cFωβ, cMAE, cFβ, cEm, cIoU)."""
    heads = ["cSm ↑", "cFωβ ↑", "cMAE ↓", "cFβ ↑", "cEm ↑", "cIoU ↑"]
    vals = [f"{metrics[a]:.{digits}f}" for a in PAPER_ALIASES]
    return (
        "| | " + " | ".join(heads) + " |\n"
        "|---|" + "---:|" * len(heads) + "\n"
        f"| {title} | " + " | ".join(vals) + " |\n"
    )


def diagnostics_table(metrics: Mapping[str, float], title: str = "OVCamo", digits: int = 3) -> str:
    """Markdown table of the class-agnostic diagnostics beside the official class-aware numbers.

    ``metrics``: a :func:`ovcamo.metrics.summarize` result. The first row repeats the official
    numbers for comparison; the second has the class check switched off; the last column is the
    classification accuracy. Not part of the OVCOS protocol (see ``DIAGNOSTICS_NOTE``).
    """
    heads = ["Sm ↑", "Fωβ ↑", "MAE ↓", "Fβ ↑", "Em ↑", "IoU ↑", "class accuracy ↑"]
    aware = [f"{metrics[a]:.{digits}f}" for a in PAPER_ALIASES]
    agnostic = [f"{metrics[a]:.{digits}f}" for a in AGNOSTIC_KEYS]
    accuracy = f"{metrics['class_accuracy']:.{digits}f}"
    return (
        "| | " + " | ".join(heads) + " |\n"
        "|---|" + "---:|" * len(heads) + "\n"
        f"| {title}, class-aware (official) | " + " | ".join(aware) + f" | {accuracy} |\n"
        f"| {title}, class-agnostic (diagnostic) | " + " | ".join(agnostic) + f" | {accuracy} |\n"
    )
