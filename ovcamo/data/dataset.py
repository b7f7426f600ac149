"""Datasets over an OVCamo-format folder: train split, test split, held-out base-validation part."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from ovcamo.data.ovcamo_format import (
    ClassInfo,
    DataPaths,
    Record,
    Split,
    ValidationReport,
    load_class_info,
    load_sample_info,
    resolve_records,
)
from ovcamo.data.samples import holdout_split, load_sample


class OVCamoDataset(Dataset):
    """One split of an OVCamo-format dataset.

    Yields dicts ``{"image": uint8 H×W×3, "mask": bool H×W, "class_name": str, "unique_id": str}``
    passed through ``transform`` when given. ``part`` selects, for the train split, the whole split
    (``"all"``), the training part (``"train"``) or the held-out base-validation part (``"val"``).
    """

    def __init__(
        self,
        paths: DataPaths,
        split: Split,
        *,
        part: str = "all",
        holdout_fraction: float = 0.0,
        holdout_seed: int = 0,
        classes: Sequence[ClassInfo] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        strict: bool = False,
        check_files: str = "header",
    ):
        if part not in ("all", "train", "val"):
            raise ValueError(f"part must be 'all', 'train' or 'val', got {part!r}")
        if part != "all" and split != "train":
            raise ValueError("a held-out part exists only for the train split")
        self.paths = paths
        self.split = split
        self.classes = list(classes) if classes is not None else load_class_info(paths.class_info)
        records, self.report = resolve_records(
            paths,
            split,
            self.classes,
            load_sample_info(paths.sample_info),
            strict=strict,
            check_files=check_files,
        )
        if part != "all":
            kept, held = holdout_split(records, holdout_fraction, holdout_seed)
            records = kept if part == "train" else held
        self.records: list[Record] = records
        self.transform = transform

    @property
    def class_names(self) -> list[str]:
        """Names of this split's classes, ordered by class id."""
        return [c.name for c in sorted(self.classes, key=lambda c: c.id) if c.split == self.split]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = load_sample(self.records[index])
        return self.transform(sample) if self.transform is not None else sample

    @property
    def validation(self) -> ValidationReport:
        return self.report
