"""The class-aware OVCOS metrics (OVCamo, ECCV 2024) as a torchmetrics ``Metric``, for training
loops and users who want one; scoring a prediction folder does not use it (nor torch).

Each sample is scored by :func:`ovcamo.metrics.functional.sample_scores` and aggregated by
:func:`ovcamo.metrics.summary.summarize` (class check, official averages, diagnostics).
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

from ovcamo.metrics.functional import SCORE_LENGTH, sample_scores
from ovcamo.metrics.summary import per_sample_rows, summarize
from ovcamo.metrics.tables import hard_subset, per_class_table


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
    (``sm, wfm, mae, adpfm, avgfm, maxfm, adpem, avgem, maxem, adpiou, avgiou, maxiou``), the
    paper aliases (``cSm, cFwb, cMAE, cFb, cEm, cIoU``) and the diagnostics outside the protocol
    (``agnostic_Sm … agnostic_IoU``, ``class_accuracy``; see
    :data:`ovcamo.metrics.summary.DIAGNOSTICS_NOTE`); ``per_sample`` returns one dict per sample;
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
        """The official keys, the paper aliases and the diagnostics, averaged over every sample seen
        on every rank."""
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
        """One dict per sample: ids, classes, ``correct``, the twelve official keys and the six
        ``agnostic_*`` ones (see :func:`ovcamo.metrics.summary.per_sample_rows`).

        Per-sample ``avg*``/``max*`` are the mean/max of that sample's own curve.
        """
        scores, correct, records = self.synced_arrays()
        return per_sample_rows(scores, correct, records, class_aware_scores)

    def per_class_table(self, class_order: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per GT class (see :func:`ovcamo.metrics.tables.per_class_table`)."""
        scores, correct, records = self.synced_arrays()
        return per_class_table(scores, correct, records, class_order)

    def hard_classes(
        self,
        reference: str | os.PathLike | Mapping[str, float] | None = None,
        ranking: str | os.PathLike | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Metrics over the hardest quarter of the classes (15 of 61): the first of ``ranking``
        (OVCoser's, names hardest first), else the lowest cIoU of ``reference`` (a
        ``per_class.csv`` or a ``{class: cIoU}`` mapping), else of this run
        (see :func:`ovcamo.metrics.tables.hard_subset`)."""
        scores, correct, records = self.synced_arrays()
        rows = per_class_table(scores, correct, records)
        return hard_subset(scores, correct, records, rows, reference, ranking)
