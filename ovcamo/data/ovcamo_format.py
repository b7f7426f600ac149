"""The OVCamo dataset format (OVCamo, ECCV 2024): class and sample lists, paths, validation
(docs/design.md, "Data format")."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ovcamo.data.io import (
    PathEscapeError,
    atomic_write_json,
    mask_is_empty,
    name_part_problem,
    open_image,
    safe_join,
)

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


#: The six paths of a dataset folder in OVCamo's own layout, relative to it (what a rendered world
#: and a generated set write into their ``paths.json``).
STANDARD_LAYOUT = {
    "class_info": "class_info.json",
    "sample_info": "sample_info.json",
    "train_image_dir": "train/image",
    "train_mask_dir": "train/mask",
    "test_image_dir": "test/image",
    "test_mask_dir": "test/mask",
}


class DatasetFormatError(ValueError):
    """A json file of the dataset does not have the OVCamo layout."""


class DatasetValidationError(ValueError):
    """Validation found problems and ``strict`` was set; the message lists every problem with counts."""

    def __init__(self, report: ValidationReport, where: str = ""):
        self.report = report
        # One paragraph: the report's lines joined.
        summary = "; ".join(line.strip() for line in report.summary().splitlines())
        super().__init__(f"{where}: {summary}" if where else summary)


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


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a json file of the dataset; a missing file, text that is not UTF-8 and invalid JSON
    raise errors that name the file (a UTF-8 byte-order mark is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DatasetFormatError(
            f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r}); "
            "re-save the file as UTF-8"
        ) from e
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from e


def _load_json_list(path: str | os.PathLike, what: str) -> list[Any]:
    data = read_json(path, what)
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{path}: expected a JSON list of {what} entries, got {type(data).__name__}"
        )
    return data


_MAX_LISTED = 10


def _raise_malformed(path: str | os.PathLike, n: int, problems: list[str], rule: str) -> None:
    if problems:
        shown = problems[:_MAX_LISTED]
        more = len(problems) - len(shown)
        raise DatasetFormatError(
            f"{path}: {len(problems)} problem(s) in {n} entries; {rule}\n  "
            + "\n  ".join(shown)
            + (f"\n  … and {more} more" if more else "")
        )


def _check_type(entry: Mapping[str, Any], key: str, kind: type) -> str | None:
    """Why ``entry[key]`` is not of ``kind`` (``str``: non-empty; ``int``: an integer or a string
    of digits, never a boolean), or ``None`` when it is."""
    value = entry[key]
    if kind is str:
        ok = isinstance(value, str) and value != ""
        want = "a non-empty string"
    else:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.strip().lstrip("-").isdigit()
        )
        want = "an integer"
    return None if ok else f"has {key} = {json.dumps(value, ensure_ascii=False)}: expected {want}"


def _label(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    return f" ({key} {value!r})" if isinstance(value, str) and value else ""


_CLASS_RULE = (
    "every entry needs name (string), id (integer) and split ('train' or 'test'); super_class, "
    "sub_class (list of strings) and num_samples (integer) are optional"
)


def load_class_info(path: str | os.PathLike) -> list[ClassInfo]:
    """Read ``class_info.json``; names are kept byte-exact (``snow leopard``, ``reccoon``).

    Every malformed entry is listed in one :class:`DatasetFormatError`.
    """
    entries = _load_json_list(path, "class_info")
    out: list[ClassInfo] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            problems.append(f"entry {i} is not an object")
            continue
        where = f"entry {i}{_label(e, 'name')}"
        missing = [k for k in ("name", "id", "split") if k not in e]
        if missing:
            problems.append(f"{where} lacks key(s) {missing}")
            continue
        found = [_check_type(e, "name", str), _check_type(e, "id", int)]
        found += [_check_type(e, "num_samples", int) if "num_samples" in e else None]
        if not isinstance(e.get("super_class", ""), str):
            found.append(f"has super_class = {json.dumps(e['super_class'])}: expected a string")
        sub = e.get("sub_class", [])
        if not (isinstance(sub, list) and all(isinstance(x, str) for x in sub)):
            found.append(f"has sub_class = {json.dumps(sub)}: expected a list of strings")
        if isinstance(e["name"], str) and (bad := name_part_problem(e["name"])):
            found.append(f"has a name that {bad}: class names become parts of file names")
        if e["split"] not in SPLITS:
            found.append(f"has split {e['split']!r}, expected 'train' or 'test'")
        found = [f for f in found if f]
        if found:
            problems += [f"{where} {f}" for f in found]
            continue
        if e["name"] in seen:
            problems.append(f"{where}: class {e['name']!r} is listed twice")
            continue
        seen.add(e["name"])
        out.append(
            ClassInfo(
                name=e["name"],
                id=int(e["id"]),
                super_class=e.get("super_class", ""),
                sub_class=tuple(sub),
                split=e["split"],
                num_samples=int(e.get("num_samples", 0)),
            )
        )
    _raise_malformed(path, len(entries), problems, _CLASS_RULE)
    return out


_SAMPLE_KEYS = ("unique_id", "base_class", "image", "mask", "id")
_SAMPLE_RULE = "every entry needs unique_id, base_class, image and mask (strings) and id (integer)"


def load_sample_info(path: str | os.PathLike) -> list[SampleInfo]:
    """Read ``sample_info.json``; fields beyond the five official ones go to ``SampleInfo.extra``.

    Every malformed entry (a missing key, ``null``, a number where a name belongs, an ``id`` that
    is not an integer) is listed in one :class:`DatasetFormatError`.
    """
    entries = _load_json_list(path, "sample_info")
    out: list[SampleInfo] = []
    problems: list[str] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            problems.append(f"entry {i} is not an object")
            continue
        where = f"entry {i}{_label(e, 'unique_id')}"
        missing = [k for k in _SAMPLE_KEYS if k not in e]
        if missing:
            problems.append(f"{where} lacks key(s) {missing}")
            continue
        found = [_check_type(e, k, int if k == "id" else str) for k in _SAMPLE_KEYS]
        if any(found):
            problems += [f"{where} {f}" for f in found if f]
            continue
        extra = {k: v for k, v in e.items() if k not in _SAMPLE_KEYS}
        out.append(
            SampleInfo(
                unique_id=e["unique_id"],
                base_class=e["base_class"],
                image=e["image"],
                mask=e["mask"],
                id=int(e["id"]),
                extra=extra,
            )
        )
    _raise_malformed(path, len(entries), problems, _SAMPLE_RULE)
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
        data = read_json(path, "paths.json")
        if not isinstance(data, dict):
            raise DatasetFormatError(
                f"{path}: expected a JSON object with the keys {', '.join(DATA_KEYS)}"
            )
        try:
            return cls.from_cfg(data, base=path.parent)
        except KeyError as e:
            raise DatasetFormatError(f"{path}: {e.args[0]}") from e

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
#: Conditions kept as they are but reported because a researcher would want to know.
WARNINGS = ("empty_mask",)
#: What a kind means, printed under its count where the name alone does not say it.
HINTS = {
    "empty_mask": "the mask has no foreground pixel; kept for training, while ovcamo-eval "
    "refuses such GT masks (IoU and F-measure are 0/0 on them) unless allow_empty_gt=true",
}


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

    @property
    def n_warnings(self) -> int:
        return sum(self.counts[k] for k in WARNINGS)

    def summary(self) -> str:
        lines = [f"checked {self.n_checked} samples, kept {self.n_kept}"]
        for kind in (*ERRORS, *WARNINGS, *NOTES):
            if self.counts[kind]:
                tag = "error" if kind in ERRORS else "warning" if kind in WARNINGS else "note"
                lines.append(
                    f"  {tag} {kind}: {self.counts[kind]} (e.g. {', '.join(self.examples[kind])})"
                )
                if kind in HINTS:
                    lines.append(f"    {HINTS[kind]}")
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
        with open_image(path) as im:
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


def _inspect_mask(path: Path, full: bool) -> tuple[tuple[int, int] | None, list[str]]:
    """Return ``(size, notes)``; size ``None`` when the file cannot be decoded or is cut short.

    Masks are always decoded (small single-channel files, cheap to decode) to find empty ones; ``full`` also classifies their encoding (0/1, 0/255 or soft).
    """
    try:
        with open_image(path) as im:
            size, fmt = im.size, im.format
            im.load()
            notes = ["empty_mask"] if mask_is_empty(im) else []
            arr = np.asarray(im) if full else None
        if _cut_short(path, fmt):
            return None, []
    except (OSError, ValueError, SyntaxError):
        return None, []
    if arr is None:
        return size, notes
    values = np.unique(arr)
    if values.size <= 2 and values.max(initial=0) == 1:
        return size, [*notes, "mask_values_01"]
    if values.size <= 2 and set(values.tolist()) <= {0, 255}:
        return size, [*notes, "mask_values_0255"]
    return size, [*notes, "mask_values_soft"]


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

    Every problem is counted (see ``ERRORS``, ``WARNINGS`` and ``NOTES``). With ``strict`` any
    error raises :class:`DatasetValidationError` carrying the whole report; otherwise faulty
    samples are dropped. ``check_files``: ``none`` (paths only), ``header`` (open each image,
    compare sizes, check that PNG/JPEG files end with their end marker, which finds truncated
    files, and decode each mask, which finds empty masks) or ``full`` (also decode every image
    pixel, which finds corrupt bodies behind intact ends, and classify mask encodings). A corrupt
    image body that ``header`` lets through fails when the sample is read, with an
    :class:`~ovcamo.data.samples.UnreadableSampleError` naming the file; the trainer skips and
    counts such samples (``data.strict=true`` stops).
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
        msize, mnotes = _inspect_mask(r.mask_path, full)
        if isize is None:
            problems.append("unreadable_image")
        if msize is None:
            problems.append("unreadable_mask")
        if problems:
            return problems
        notes = [n for n in (inote, *mnotes) if n]
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
        raise DatasetValidationError(
            report,
            f"unusable samples in the {split} split of {paths.sample_info} (data.strict=true "
            "stops on them; data.strict=false drops and counts them)",
        )
    return records, report


def class_names(classes: Sequence[ClassInfo], split: Split) -> list[str]:
    """Class names of one split, ordered by class id."""
    return [c.name for c in sorted(classes, key=lambda c: c.id) if c.split == split]
