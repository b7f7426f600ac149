"""Class-aware OVCOS metrics (cSm, cFωβ, cMAE, cFβ, cEm, cIoU) as torchmetrics ``Metric`` subclasses."""

from ovcamo.metrics.functional import SCORE_LENGTH, SampleScores, sample_scores
from ovcamo.metrics.ovcos import (
    METRIC_KEYS,
    PAPER_ALIASES,
    OVCOSMetric,
    class_aware,
    per_sample_rows,
    summarize,
)
from ovcamo.metrics.postprocess import to_uint8_prediction
from ovcamo.metrics.tables import (
    hard_classes,
    hard_subset,
    paper_table,
    per_class_csv,
    per_class_table,
    read_class_ciou,
)

__all__ = [
    "METRIC_KEYS",
    "PAPER_ALIASES",
    "SCORE_LENGTH",
    "OVCOSMetric",
    "SampleScores",
    "class_aware",
    "hard_classes",
    "hard_subset",
    "paper_table",
    "per_class_csv",
    "per_class_table",
    "per_sample_rows",
    "read_class_ciou",
    "sample_scores",
    "summarize",
    "to_uint8_prediction",
]
