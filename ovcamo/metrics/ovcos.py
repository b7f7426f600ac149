"""The class-aware OVCOS metrics (OVCamo, ECCV 2024; DESIGN §4) as a torchmetrics ``Metric``.

Each sample is scored by :func:`ovcamo.metrics.functional.sample_scores`; when the predicted class
string differs from the GT class, Sm, Fωβ, Fβ, Em and IoU (adaptive and curves) count as 0 and MAE
as 1. Averages are over samples: scalars are averaged directly, curves are averaged per threshold and
then reduced by mean (``avg*``) and max (``max*``), as the official evaluator does.

Per-sample scores are kept (raw, with the class check stored beside them) and synchronise across
processes, so every rank can build per-class tables and the hard-class subset after ``compute``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ovcamo.metrics.functional import (
    CURVE_KEYS,
    NUM_THRESHOLDS,
    SCALAR_KEYS,
    SCORE_LENGTH,
    sample_scores,
)

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


def class_aware(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Apply the class check to raw score vectors.

    ``scores``: float64 ``(N, SCORE_LENGTH)`` raw per-sample scores; ``correct``: bool ``(N,)``.
    Rows of misclassified samples become 0 everywhere except MAE, which becomes 1.
    """
    out = np.where(correct[:, None], scores, 0.0)
    mae = SCALAR_KEYS.index("mae")
    out[~correct, mae] = 1.0
    return out


def summarize(scores: np.ndarray, correct: np.ndarray | None = None) -> dict[str, float]:
    """The twelve official numbers and the six paper aliases over a set of samples.

    ``scores``: float64 ``(N, SCORE_LENGTH)`` raw per-sample scores; ``correct``: bool ``(N,)``
    class checks (``None`` scores segmentation alone, as if every class were right).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, SCORE_LENGTH)
    if scores.shape[0] == 0:
        raise ValueError("no samples to summarise")
    if correct is not None:
        scores = class_aware(scores, np.asarray(correct, dtype=bool))
    mean = scores.mean(axis=0)
    out: dict[str, float] = {}
    for i, key in enumerate(SCALAR_KEYS):
        out[key] = float(mean[i])
    offset = len(SCALAR_KEYS)
    for j, key in enumerate(CURVE_KEYS):
        curve = mean[offset + j * NUM_THRESHOLDS : offset + (j + 1) * NUM_THRESHOLDS]
        out[f"avg{key}"] = float(curve.mean())
        out[f"max{key}"] = float(curve.max())
    result = {k: out[k] for k in METRIC_KEYS}
    result.update({alias: out[key] for alias, key in PAPER_ALIASES.items()})
    return result


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _encode(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Strings as one uint8 tensor of UTF-8 bytes plus their lengths, so they can be gathered."""
    blobs = [t.encode("utf-8") for t in texts]
    data = torch.from_numpy(np.frombuffer(b"".join(blobs), dtype=np.uint8).copy())
    return data, torch.tensor([len(b) for b in blobs], dtype=torch.int64)


def _decode(data: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    raw = bytes(data.cpu().numpy().tobytes())
    out, pos = [], 0
    for n in lengths.tolist():
        out.append(raw[pos : pos + n].decode("utf-8"))
        pos += n
    return out


class OVCOSMetric(Metric):
    """Class-aware OVCOS metrics over a stream of (prediction, GT, predicted class, GT class) samples.

    ``update`` scores one sample (``update_batch`` several); ``compute`` returns the official keys
    (``sm, wfm, mae, adpfm, avgfm, maxfm, adpem, avgem, maxem, adpiou, avgiou, maxiou``) and the
    paper aliases (``cSm, cFwb, cMAE, cFb, cEm, cIoU``); ``per_sample`` returns one dict per sample;
    ``scores``/``correct``/``records`` expose the synchronised arrays for
    :mod:`ovcamo.metrics.tables`.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("raw_scores", default=[], dist_reduce_fx="cat")
        self.add_state("class_match", default=[], dist_reduce_fx="cat")
        # unique_id, predicted class and GT class of each sample, as one JSON string per sample.
        self.add_state("text_bytes", default=[], dist_reduce_fx="cat")
        self.add_state("text_lengths", default=[], dist_reduce_fx="cat")

    def update(
        self, pred: np.ndarray, gt: np.ndarray, pred_class: str, gt_class: str, unique_id: str
    ) -> None:
        """Score one sample: ``pred`` uint8 ``H×W`` (the PNG), ``gt`` bool ``H×W``, class strings."""
        self._append(sample_scores(pred, gt).to_vector(), pred_class, gt_class, unique_id)

    def update_batch(
        self,
        preds: Sequence[np.ndarray],
        gts: Sequence[np.ndarray],
        pred_classes: Sequence[str],
        gt_classes: Sequence[str],
        unique_ids: Sequence[str],
    ) -> None:
        """Score several samples (same arguments as :meth:`update`, as sequences)."""
        if not len(preds) == len(gts) == len(pred_classes) == len(gt_classes) == len(unique_ids):
            raise ValueError("update_batch needs sequences of equal length")
        for args in zip(preds, gts, pred_classes, gt_classes, unique_ids, strict=True):
            self.update(*args)

    def add_scores(
        self,
        scores: np.ndarray,
        pred_class: str | Sequence[str],
        gt_class: str | Sequence[str],
        unique_id: str | Sequence[str],
    ) -> None:
        """Add already computed raw score vectors (``(SCORE_LENGTH,)`` or ``(N, SCORE_LENGTH)``).

        Lets a process pool score samples and a single metric object collect them.
        """
        self._append(scores, pred_class, gt_class, unique_id)
        # Bookkeeping torchmetrics' update wrapper does: count the update and drop a cached compute.
        self._update_count += 1
        self._computed = None

    def _append(
        self,
        scores: np.ndarray,
        pred_class: str | Sequence[str],
        gt_class: str | Sequence[str],
        unique_id: str | Sequence[str],
    ) -> None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1, SCORE_LENGTH)
        pcs, gcs, uids = _as_list(pred_class), _as_list(gt_class), _as_list(unique_id)
        if not len(pcs) == len(gcs) == len(uids) == scores.shape[0]:
            raise ValueError("one predicted class, GT class and unique_id per score row is needed")
        # States live on the metric's device so that NCCL can gather them.
        self.raw_scores.append(torch.from_numpy(scores.copy()).to(self.device))
        self.class_match.append(
            torch.tensor(
                [p == g for p, g in zip(pcs, gcs, strict=True)],
                dtype=torch.bool,
                device=self.device,
            )
        )
        data, lengths = _encode(
            [
                json.dumps([u, p, g], ensure_ascii=False)
                for u, p, g in zip(uids, pcs, gcs, strict=True)
            ]
        )
        self.text_bytes.append(data.to(self.device))
        self.text_lengths.append(lengths.to(self.device))

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
        if isinstance(self.raw_scores, list) and not self.raw_scores:
            return np.zeros((0, SCORE_LENGTH)), np.zeros(0, bool), []
        scores = dim_zero_cat(self.raw_scores).double().cpu().numpy().reshape(-1, SCORE_LENGTH)
        correct = dim_zero_cat(self.class_match).cpu().numpy().astype(bool)
        texts = _decode(dim_zero_cat(self.text_bytes), dim_zero_cat(self.text_lengths))
        records = [tuple(json.loads(t)) for t in texts]
        return scores, correct, records

    def compute(self) -> dict[str, float]:
        """The official keys and the paper aliases, averaged over every sample seen on every rank."""
        scores, correct, _ = self._arrays()
        if scores.shape[0] == 0:
            raise RuntimeError("OVCOSMetric.compute() called before any update()")
        return summarize(scores, correct)

    def synced_arrays(self) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
        """Raw scores ``(N, SCORE_LENGTH)``, class checks ``(N,)`` and ``(unique_id, pred_class,
        gt_class)`` per sample, gathered from every rank."""
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            return self._arrays()

    def per_sample(self, class_aware_scores: bool = True) -> list[dict[str, Any]]:
        """One dict per sample: ids, classes, ``correct`` and the twelve official keys.

        Per-sample ``avg*``/``max*`` are the mean/max of that sample's own curve.
        """
        scores, correct, records = self.synced_arrays()
        return per_sample_rows(scores, correct, records, class_aware_scores)

    def per_class_table(self, class_order: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per GT class (see :func:`ovcamo.metrics.tables.per_class_table`)."""
        from ovcamo.metrics.tables import per_class_table  # tables builds on this module

        scores, correct, records = self.synced_arrays()
        return per_class_table(scores, correct, records, class_order)

    def hard_classes(
        self, reference: str | os.PathLike | Mapping[str, float] | None = None
    ) -> dict[str, Any]:
        """Metrics over the bottom quarter of classes by cIoU, ranked by ``reference`` (a
        ``per_class.csv`` or a ``{class: cIoU}`` mapping) or by this run
        (see :func:`ovcamo.metrics.tables.hard_subset`)."""
        from ovcamo.metrics.tables import hard_subset, per_class_table

        scores, correct, records = self.synced_arrays()
        rows = per_class_table(scores, correct, records)
        return hard_subset(scores, correct, records, rows, reference)


def per_sample_rows(
    scores: np.ndarray,
    correct: np.ndarray,
    records: Sequence[tuple[str, str, str]],
    class_aware_scores: bool = True,
) -> list[dict[str, Any]]:
    """Per-sample dicts from raw scores (see :meth:`OVCOSMetric.per_sample`)."""
    shown = class_aware(scores, correct) if class_aware_scores else scores
    rows = []
    for vec, ok, (uid, pc, gc) in zip(shown, correct, records, strict=True):
        row: dict[str, Any] = {
            "unique_id": uid,
            "gt_class": gc,
            "pred_class": pc,
            "correct": bool(ok),
        }
        row.update(summarize(vec[None, :]))
        rows.append(
            {k: row[k] for k in ("unique_id", "gt_class", "pred_class", "correct", *METRIC_KEYS)}
        )
    return rows
