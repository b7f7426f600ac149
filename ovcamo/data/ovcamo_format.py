"""The OVCamo dataset format (OVCamo, ECCV 2024; DESIGN §3): class and sample lists, paths, validation."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ovcamo.data.io import PathEscapeError, atomic_write_json, safe_join

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")

#: The six config keys that name a dataset everywhere in the toolkit (``data.<key>``).
DATA_KEYS = (
    "class_info",
    "sample_info",
    "train_image_dir",
    "train_mask_dir",
    "test_image_dir",
    "test_mask_dir",
)


class DatasetFormatError(ValueError):
    """A json file of the dataset does not have the OVCamo layout."""


class DatasetValidationError(ValueError):
    """Validation found problems and ``strict`` was set; the message lists every problem with counts."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


@dataclass(frozen=True)
class ClassInfo:
    """One entry of ``class_info.json``."""

    name: str
    id: int
    super_class: str
    sub_class: tuple[str, ...]
    split: Split
    num_samples: int

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sub_class"] = list(self.sub_class)
        return d


@dataclass(frozen=True)
class SampleInfo:
    """One entry of ``sample_info.json``; ``extra`` keeps any further fields (synthetic provenance)."""

    unique_id: str
    base_class: str
    image: str
    mask: str
    id: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_name(self) -> str:
        """File name of the image inside the split image dir: ``<unique_id><ext of image>``."""
        return self.unique_id + os.path.splitext(self.image)[1]

    @property
    def mask_name(self) -> str:
        return self.unique_id + os.path.splitext(self.mask)[1]

    @property
    def synthetic(self) -> bool:
        return bool(self.extra.get("synthetic", False))

    def to_json(self) -> dict[str, Any]:
        d = {
            "unique_id": self.unique_id,
            "base_class": self.base_class,
            "image": self.image,
            "mask": self.mask,
            "id": self.id,
        }
        d.update(self.extra)
        return d


def _load_json_list(path: str | os.PathLike, what: str) -> list[Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{path}: expected a JSON list of {what} entries, got {type(data).__name__}"
        )
    return data


def load_class_info(path: str | os.PathLike) -> list[ClassInfo]:
    """Read ``class_info.json``; names are kept byte-exact (``snow leopard``, ``reccoon``)."""
    out: list[ClassInfo] = []
    seen: set[str] = set()
    for i, e in enumerate(_load_json_list(path, "class_info")):
        try:
            split = e["split"]
            if split not in SPLITS:
                raise DatasetFormatError(
                    f"{path}: entry {i} ({e.get('name')!r}) has split {split!r}, expected 'train' or 'test'"
                )
            ci = ClassInfo(
                name=str(e["name"]),
                id=int(e["id"]),
                super_class=str(e.get("super_class", "")),
                sub_class=tuple(e.get("sub_class", ())),
                split=split,
                num_samples=int(e.get("num_samples", 0)),
            )
        except (KeyError, TypeError) as err:
            raise DatasetFormatError(
                f"{path}: entry {i} lacks key or has wrong type: {err}"
            ) from err
        if ci.name in seen:
            raise DatasetFormatError(f"{path}: class {ci.name!r} is listed twice")
        seen.add(ci.name)
        out.append(ci)
    return out


_SAMPLE_KEYS = ("unique_id", "base_class", "image", "mask", "id")


def load_sample_info(path: str | os.PathLike) -> list[SampleInfo]:
    """Read ``sample_info.json``; fields beyond the five official ones go to ``SampleInfo.extra``."""
    out: list[SampleInfo] = []
    for i, e in enumerate(_load_json_list(path, "sample_info")):
        if not isinstance(e, dict):
            raise DatasetFormatError(f"{path}: entry {i} is not an object")
        missing = [k for k in _SAMPLE_KEYS if k not in e]
        if missing:
            raise DatasetFormatError(f"{path}: entry {i} lacks key(s) {missing}")
        extra = {k: v for k, v in e.items() if k not in _SAMPLE_KEYS}
        out.append(
            SampleInfo(
                unique_id=str(e["unique_id"]),
                base_class=str(e["base_class"]),
                image=str(e["image"]),
                mask=str(e["mask"]),
                id=int(e["id"]),
                extra=extra,
            )
        )
    return out


def write_class_info(path: str | os.PathLike, classes: Iterable[ClassInfo]) -> None:
    atomic_write_json(path, [c.to_json() for c in classes])


def write_sample_info(path: str | os.PathLike, samples: Iterable[SampleInfo]) -> None:
    atomic_write_json(path, [s.to_json() for s in samples])


@dataclass(frozen=True)
class DataPaths:
    """The six things that name an OVCamo-format dataset (config keys ``data.<field>``)."""

    class_info: Path
    sample_info: Path
    train_image_dir: Path
    train_mask_dir: Path
    test_image_dir: Path
    test_mask_dir: Path

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], base: str | os.PathLike | None = None) -> DataPaths:
        """Build from a mapping with the six keys (a ``data`` config node); relative paths join ``base``."""
        missing = [k for k in DATA_KEYS if cfg.get(k) in (None, "")]
        if missing:
            raise KeyError(f"dataset config lacks {', '.join('data.' + k for k in missing)}")
        base_path = Path(base) if base is not None else None

        def p(k: str) -> Path:
            v = Path(os.path.expanduser(str(cfg[k])))
            return base_path / v if base_path is not None and not v.is_absolute() else v

        return cls(**{k: p(k) for k in DATA_KEYS})

    @classmethod
    def from_paths_json(cls, path: str | os.PathLike) -> DataPaths:
        """Read a ``paths.json`` written beside a dataset; relative entries are relative to it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"paths.json not found: {path}")
        return cls.from_cfg(json.loads(path.read_text(encoding="utf-8")), base=path.parent)

    def to_json(self, relative_to: str | os.PathLike | None = None) -> dict[str, str]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = os.path.relpath(v, relative_to) if relative_to is not None else str(v)
        return out

    def image_dir(self, split: Split) -> Path:
        return self.train_image_dir if split == "train" else self.test_image_dir

    def mask_dir(self, split: Split) -> Path:
        return self.train_mask_dir if split == "train" else self.test_mask_dir


@dataclass(frozen=True)
class Record:
    """A sample resolved to files: what a dataset yields metadata for."""

    info: SampleInfo
    split: Split
    image_path: Path
    mask_path: Path

    @property
    def unique_id(self) -> str:
        return self.info.unique_id

    @property
    def class_name(self) -> str:
        return self.info.base_class


#: Problems that make a sample unusable (skipped when not strict, fatal when strict).
ERRORS = (
    "path_escape",
    "duplicate_unique_id",
    "unknown_class",
    "missing_image",
    "missing_mask",
    "unreadable_image",
    "unreadable_mask",
)
#: Conditions the loader fixes on the fly (counted and reported, never fatal).
NOTES = (
    "size_mismatch_resized",
    "image_converted_grayscale",
    "image_converted_rgba",
    "image_converted_16bit",
    "image_converted_other",
    "mask_values_01",
    "mask_values_0255",
    "mask_values_soft",
    "class_without_samples",
)


@dataclass
class ValidationReport:
    """Every problem found in one validation pass, with counts and example ids."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    n_checked: int = 0
    n_kept: int = 0

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 5:
            ex.append(example)

    @property
    def n_errors(self) -> int:
        return sum(self.counts[k] for k in ERRORS)

    def summary(self) -> str:
        lines = [f"checked {self.n_checked} samples, kept {self.n_kept}"]
        for kind in (*ERRORS, *NOTES):
            if self.counts[kind]:
                tag = "error" if kind in ERRORS else "note"
                lines.append(
                    f"  {tag} {kind}: {self.counts[kind]} (e.g. {', '.join(self.examples[kind])})"
                )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "n_checked": self.n_checked,
            "n_kept": self.n_kept,
            "counts": dict(self.counts),
            "examples": self.examples,
        }


_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _cut_short(path: Path, fmt: str | None) -> bool:
    """Whether a PNG or JPEG file lacks its end marker: a truncated file found without decoding it.

    JPEG writers may append padding after the end-of-image marker, so its last kilobyte is searched.
    """
    if fmt not in ("PNG", "JPEG"):
        return False
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 1024))
        tail = f.read()
    return not tail.endswith(_PNG_TRAILER) if fmt == "PNG" else b"\xff\xd9" not in tail


def _inspect_image(path: Path, full: bool) -> tuple[tuple[int, int] | None, str | None]:
    """Return ``(size, note)``; size ``None`` when the file cannot be read or is cut short."""
    try:
        with Image.open(path) as im:
            size, mode, fmt = im.size, im.mode, im.format
            if full:
                im.load()
        if _cut_short(path, fmt):
            return None, None
    except (OSError, ValueError, SyntaxError):
        return None, None
    if mode in ("L", "1"):
        note = "image_converted_grayscale"
    elif mode in ("RGBA", "LA"):
        note = "image_converted_rgba"
    elif mode.startswith("I") or mode == "F":
        note = "image_converted_16bit"
    elif mode != "RGB":
        note = "image_converted_other"
    else:
        note = None
    return size, note


def _inspect_mask(path: Path, full: bool) -> tuple[tuple[int, int] | None, str | None]:
    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
            if not full:
                return (None if _cut_short(path, fmt) else size), None
            import numpy as np

            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError):
        return None, None
    values = np.unique(arr)
    if values.size <= 2 and values.max(initial=0) == 1:
        return size, "mask_values_01"
    if values.size <= 2 and set(values.tolist()) <= {0, 255}:
        return size, "mask_values_0255"
    return size, "mask_values_soft"


def resolve_records(
    paths: DataPaths,
    split: Split,
    classes: Sequence[ClassInfo] | None = None,
    samples: Sequence[SampleInfo] | None = None,
    *,
    strict: bool = False,
    check_files: Literal["none", "header", "full"] = "header",
    num_threads: int = 8,
) -> tuple[list[Record], ValidationReport]:
    """Resolve the samples of one split to files and validate them in one pass.

    Every problem is counted (see ``ERRORS`` and ``NOTES``). With ``strict`` any error raises
    :class:`DatasetValidationError` carrying the whole report; otherwise faulty samples are dropped.
    ``check_files``: ``none`` (paths only), ``header`` (open each file, compare sizes, and check
    that PNG/JPEG files end with their end marker, which finds truncated files) or ``full`` (decode
    every pixel: also finds corrupt bodies and classifies mask encodings).
    """
    classes = list(classes) if classes is not None else load_class_info(paths.class_info)
    samples = list(samples) if samples is not None else load_sample_info(paths.sample_info)
    split_of = {c.name: c.split for c in classes}
    report = ValidationReport()
    candidates: list[Record] = []
    seen: set[str] = set()
    class_counts: Counter = Counter()
    for s in samples:
        cls_split = split_of.get(s.base_class)
        if cls_split is None:
            # A sample of a class absent from class_info belongs to no split; count it once, in train.
            if split == "train":
                report.n_checked += 1
                report.add("unknown_class", f"{s.unique_id} ({s.base_class!r})")
            continue
        if cls_split != split:
            continue
        report.n_checked += 1
        if s.unique_id in seen:
            report.add("duplicate_unique_id", s.unique_id)
            continue
        seen.add(s.unique_id)
        try:
            image_path = safe_join(paths.image_dir(split), s.image_name)
            mask_path = safe_join(paths.mask_dir(split), s.mask_name)
        except PathEscapeError as e:
            report.add("path_escape", f"{s.unique_id!r}: {e}")
            continue
        candidates.append(Record(s, split, image_path, mask_path))

    def check(r: Record) -> list[str]:
        problems = []
        if not r.image_path.is_file():
            problems.append("missing_image")
        if not r.mask_path.is_file():
            problems.append("missing_mask")
        if problems or check_files == "none":
            return problems
        full = check_files == "full"
        isize, inote = _inspect_image(r.image_path, full)
        msize, mnote = _inspect_mask(r.mask_path, full)
        if isize is None:
            problems.append("unreadable_image")
        if msize is None:
            problems.append("unreadable_mask")
        if problems:
            return problems
        notes = [n for n in (inote, mnote) if n]
        if isize != msize:
            notes.append("size_mismatch_resized")
        return notes

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        results = list(pool.map(check, candidates))
    records: list[Record] = []
    for r, found in zip(candidates, results, strict=True):
        bad = False
        for kind in found:
            report.add(kind, r.unique_id)
            bad |= kind in ERRORS
        if not bad:
            records.append(r)
            class_counts[r.class_name] += 1
    for c in classes:
        if c.split == split and class_counts[c.name] == 0:
            report.add("class_without_samples", c.name)
    report.n_kept = len(records)
    if strict and report.n_errors:
        raise DatasetValidationError(report)
    return records, report


def class_names(classes: Sequence[ClassInfo], split: Split) -> list[str]:
    """Class names of one split, ordered by class id."""
    return [c.name for c in sorted(classes, key=lambda c: c.id) if c.split == split]
