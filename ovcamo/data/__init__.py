"""OVCamo data format, datasets, transforms, synthetic mixing and the micro-world."""

from ovcamo.data.dataset import OVCamoDataset, UnreadableSampleError, holdout_split, load_sample
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
