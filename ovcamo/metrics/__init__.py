"""Class-aware OVCOS metrics (cSm, cFωβ, cMAE, cFβ, cEm, cIoU) and their class-agnostic diagnostics.

Per-sample measures (:mod:`~ovcamo.metrics.functional`), aggregation
(:mod:`~ovcamo.metrics.summary`) and per-class tables (:mod:`~ovcamo.metrics.tables`) need numpy,
scipy and OpenCV only. The torchmetrics ``OVCOSMetric`` and ``to_uint8_prediction`` need torch;
names are imported on first use, so ``import ovcamo.metrics`` stays cheap and scoring files never
loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ovcamo._lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and IDEs
    from ovcamo.metrics.functional import SCORE_LENGTH, SampleScores, sample_scores
    from ovcamo.metrics.ovcos import OVCOSMetric
    from ovcamo.metrics.postprocess import to_uint8_prediction
    from ovcamo.metrics.summary import (
        AGNOSTIC_KEYS,
        DIAGNOSTIC_KEYS,
        DIAGNOSTICS_NOTE,
        METRIC_KEYS,
        PAPER_ALIASES,
        PER_SAMPLE_COLUMNS,
        class_aware,
        per_sample_rows,
        split_diagnostics,
        summarize,
    )
    from ovcamo.metrics.tables import (
        diagnostics_table,
        hard_classes,
        hard_count,
        hard_subset,
        paper_table,
        per_class_csv,
        per_class_table,
        read_class_ciou,
    )

_EXPORTS = {
    "AGNOSTIC_KEYS": "summary",
    "DIAGNOSTICS_NOTE": "summary",
    "DIAGNOSTIC_KEYS": "summary",
    "METRIC_KEYS": "summary",
    "PAPER_ALIASES": "summary",
    "PER_SAMPLE_COLUMNS": "summary",
    "SCORE_LENGTH": "functional",
    "OVCOSMetric": "ovcos",
    "SampleScores": "functional",
    "class_aware": "summary",
    "diagnostics_table": "tables",
    "hard_classes": "tables",
    "hard_count": "tables",
    "hard_subset": "tables",
    "paper_table": "tables",
    "per_class_csv": "tables",
    "per_class_table": "tables",
    "per_sample_rows": "summary",
    "read_class_ciou": "tables",
    "sample_scores": "functional",
    "split_diagnostics": "summary",
    "summarize": "summary",
    "to_uint8_prediction": "postprocess",
}

__all__ = [
    "AGNOSTIC_KEYS",
    "DIAGNOSTICS_NOTE",
    "DIAGNOSTIC_KEYS",
    "METRIC_KEYS",
    "OVCOSMetric",
    "PAPER_ALIASES",
    "PER_SAMPLE_COLUMNS",
    "SCORE_LENGTH",
    "SampleScores",
    "class_aware",
    "diagnostics_table",
    "hard_classes",
    "hard_count",
    "hard_subset",
    "paper_table",
    "per_class_csv",
    "per_class_table",
    "per_sample_rows",
    "read_class_ciou",
    "sample_scores",
    "split_diagnostics",
    "summarize",
    "to_uint8_prediction",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
