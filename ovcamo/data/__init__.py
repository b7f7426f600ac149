"""OVCamo data format, datasets, transforms, synthetic mixing and the micro-world.

Names are imported on first use: the format and sample readers need numpy and PIL only, and only
``OVCamoDataset`` pulls in torch, so tools that read the format (``ovcamo-eval``) never load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ovcamo._lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and IDEs
    from ovcamo.data.dataset import OVCamoDataset
    from ovcamo.data.ovcamo_format import (
        DATA_KEYS,
        ClassInfo,
        DataPaths,
        DatasetFormatError,
        DatasetValidationError,
        Record,
        SampleInfo,
        ValidationReport,
        class_names,
        load_class_info,
        load_sample_info,
        resolve_records,
        write_class_info,
        write_sample_info,
    )
    from ovcamo.data.samples import UnreadableSampleError, holdout_split, load_sample

_FORMAT = (
    "DATA_KEYS",
    "ClassInfo",
    "DataPaths",
    "DatasetFormatError",
    "DatasetValidationError",
    "Record",
    "SampleInfo",
    "ValidationReport",
    "class_names",
    "load_class_info",
    "load_sample_info",
    "resolve_records",
    "write_class_info",
    "write_sample_info",
)
_EXPORTS = {
    **dict.fromkeys(_FORMAT, "ovcamo_format"),
    "OVCamoDataset": "dataset",
    "UnreadableSampleError": "samples",
    "holdout_split": "samples",
    "load_sample": "samples",
}

__all__ = [
    "DATA_KEYS",
    "ClassInfo",
    "DataPaths",
    "DatasetFormatError",
    "DatasetValidationError",
    "OVCamoDataset",
    "Record",
    "SampleInfo",
    "UnreadableSampleError",
    "ValidationReport",
    "class_names",
    "holdout_split",
    "load_class_info",
    "load_sample",
    "load_sample_info",
    "resolve_records",
    "write_class_info",
    "write_sample_info",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
