"""Aggregation of per-sample OVCOS scores: the class check, the official averages and the
class-agnostic diagnostics (numpy only).

Each sample's raw score vector comes from :func:`ovcamo.metrics.functional.sample_scores`; when
the predicted class differs from the GT class, the class-aware protocol (OVCamo, ECCV 2024) counts
Sm, Fωβ, Fβ, Em and IoU (adaptive and curves) as 0 and MAE as 1. Averages are over samples:
scalars directly, curves per threshold and then reduced by mean (``avg*``) and max (``max*``), as
the official evaluator does.

Beside the official numbers, :func:`summarize` returns diagnostics that are not part of the
protocol: the same six paper metrics with the class check switched off (``agnostic_*``) and the
share of samples whose class was predicted right (``class_accuracy``). Comparing the two tells a
bad mask from a wrong class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ovcamo.metrics.functional import CURVE_KEYS, NUM_THRESHOLDS, SCALAR_KEYS, SCORE_LENGTH

#: Output keys, with the official evaluator's names.
METRIC_KEYS = (
    "sm",
    "wfm",
    "mae",
    "adpfm",
    "avgfm",
    "maxfm",
    "adpem",
    "avgem",
    "maxem",
    "adpiou",
    "avgiou",
    "maxiou",
)
#: The paper's names (OVCamo Table 2 / BaCLIP Table 1) and the official key each one reports.
PAPER_ALIASES = {
    "cSm": "sm",
    "cFwb": "wfm",
    "cMAE": "mae",
    "cFb": "avgfm",
    "cEm": "avgem",
    "cIoU": "avgiou",
}
#: Class-agnostic diagnostics: the official key each one reports, computed without the class check.
AGNOSTIC_KEYS = {
    "agnostic_Sm": "sm",
    "agnostic_Fwb": "wfm",
    "agnostic_MAE": "mae",
    "agnostic_Fb": "avgfm",
    "agnostic_Em": "avgem",
    "agnostic_IoU": "avgiou",
}
#: Every diagnostic key: the six class-agnostic metrics and the classification accuracy.
DIAGNOSTIC_KEYS = (*AGNOSTIC_KEYS, "class_accuracy")
#: What the diagnostics are, written beside them wherever they are reported.
DIAGNOSTICS_NOTE = (
    "Diagnostics, not part of the official OVCOS protocol. agnostic_* are the six paper metrics "
    "with the class check switched off (every sample is scored as if its class were right); "
    "class_accuracy is the share of samples whose predicted class equals the GT class. A low cIoU "
    "with a high agnostic_IoU means wrong classes; a low agnostic_IoU means bad masks."
)


def class_aware(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Apply the class check to raw score vectors.

    ``scores``: float64 ``(N, SCORE_LENGTH)`` raw per-sample scores; ``correct``: bool ``(N,)``.
    Rows of misclassified samples become 0 everywhere except MAE, which becomes 1.
    """
    out = np.where(correct[:, None], scores, 0.0)
    mae = SCALAR_KEYS.index("mae")
    out[~correct, mae] = 1.0
    return out


def reduce_rows(scores: np.ndarray) -> dict[str, np.ndarray]:
    """The twelve official keys of each row: ``scores`` float64 ``(N, SCORE_LENGTH)`` →
    ``{key: (N,)}``; ``avg*``/``max*`` are the mean/max of each row's curve."""
    out: dict[str, np.ndarray] = {}
    for i, key in enumerate(SCALAR_KEYS):
        out[key] = scores[:, i]
    offset = len(SCALAR_KEYS)
    for j, key in enumerate(CURVE_KEYS):
        curves = scores[:, offset + j * NUM_THRESHOLDS : offset + (j + 1) * NUM_THRESHOLDS]
        out[f"avg{key}"] = curves.mean(axis=1)
        out[f"max{key}"] = curves.max(axis=1)
    return {k: out[k] for k in METRIC_KEYS}


def _official(mean_vector: np.ndarray) -> dict[str, float]:
    reduced = reduce_rows(mean_vector[None, :])
    return {k: float(v[0]) for k, v in reduced.items()}


def summarize(scores: np.ndarray, correct: np.ndarray | None = None) -> dict[str, float]:
    """The twelve official numbers, the six paper aliases and the seven diagnostics over samples.

    ``scores``: float64 ``(N, SCORE_LENGTH)`` raw per-sample scores; ``correct``: bool ``(N,)``
    class checks (``None`` scores segmentation alone, as if every class were right). The official
    keys and aliases are class-aware; ``agnostic_*`` are the aliases' measures over the raw scores
    and ``class_accuracy`` the mean of ``correct`` (see :data:`DIAGNOSTICS_NOTE`).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, SCORE_LENGTH)
    if scores.shape[0] == 0:
        raise ValueError("no samples to summarise")
    correct = np.ones(scores.shape[0], bool) if correct is None else np.asarray(correct, dtype=bool)
    official = _official(class_aware(scores, correct).mean(axis=0))
    agnostic = _official(scores.mean(axis=0))
    result = dict(official)
    result.update({alias: official[key] for alias, key in PAPER_ALIASES.items()})
    result.update({name: agnostic[key] for name, key in AGNOSTIC_KEYS.items()})
    result["class_accuracy"] = float(correct.mean())
    return result


def split_diagnostics(metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``(official keys and aliases, diagnostics)`` of a :func:`summarize` result."""
    official = {k: v for k, v in metrics.items() if k not in DIAGNOSTIC_KEYS}
    return official, {k: metrics[k] for k in DIAGNOSTIC_KEYS}


#: Columns of a per-sample row (:func:`per_sample_rows`).
PER_SAMPLE_COLUMNS = (
    "unique_id",
    "gt_class",
    "pred_class",
    "correct",
    *METRIC_KEYS,
    *AGNOSTIC_KEYS,
)


def per_sample_rows(
    scores: np.ndarray,
    correct: np.ndarray,
    records: Sequence[tuple[str, str, str]],
    class_aware_scores: bool = True,
) -> list[dict[str, Any]]:
    """One dict per sample with the columns :data:`PER_SAMPLE_COLUMNS`.

    ``scores``: float64 ``(N, SCORE_LENGTH)`` raw; ``correct``: bool ``(N,)``; ``records``:
    ``(unique_id, pred_class, gt_class)`` per row. The official keys are class-aware unless
    ``class_aware_scores`` is false; ``agnostic_*`` are always without the class check, so the
    mean of a column over rows gives the matching number of :func:`summarize` (for every key but
    the ``max*`` ones, which take the max of the averaged curve).
    """
    if len(records) != scores.shape[0]:
        raise ValueError(f"{len(records)} records for {scores.shape[0]} score rows")
    shown = reduce_rows(class_aware(scores, correct) if class_aware_scores else scores)
    raw = reduce_rows(scores)
    rows = []
    for i, (uid, pc, gc) in enumerate(records):
        row: dict[str, Any] = {
            "unique_id": uid,
            "gt_class": gc,
            "pred_class": pc,
            "correct": bool(correct[i]),
        }
        row.update({k: float(shown[k][i]) for k in METRIC_KEYS})
        row.update({name: float(raw[key][i]) for name, key in AGNOSTIC_KEYS.items()})
        rows.append(row)
    return rows
