"""``ovcamo-predict``: segment a user's own images with a trained model.

Images are a file, a folder (its image files, not its subfolders) or a glob; candidate classes are
a list, a text file (one name per line), a ``class_info.json``, or ``ovcamo-test`` (OVCamo's 61
test classes from the packaged class list). For every image the output folder gets the mask at the
image's own size (post-processed as the evaluator's predictions), an overlay (mask tint and
contour, predicted class and its probability) and, in ``predictions.json``, the probability of
every candidate class. ``format=ovcamo`` names the masks ``predictions/[<class>]<name>.png``, the
folder ``ovcamo-eval pred_dir=`` and the official OVCamo evaluator read.

Every input problem (no image matched, an unreadable image, a missing or empty class file, two
images with one name) is reported in one paragraph with exit status 2; outputs are built in a
hidden sibling folder that replaces ``out_dir`` only when complete.
"""

from __future__ import annotations

import glob
import logging
import pickle
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovcamo.data.io import (
    atomic_write_json,
    link_problem,
    name_part_problem,
    open_image,
    out_dir_problem,
    prediction_path,
    safe_join,
    staged_dir,
    write_png,
)

log = logging.getLogger(__name__)

#: File name suffixes taken from a folder (a glob or a file is taken as given).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: ``classes=`` value naming OVCamo's test classes.
OVCAMO_TEST = "ovcamo-test"
FORMATS = ("masks", "ovcamo")
#: The file that marks a folder as this command's output (and so safe to replace).
RESULTS_FILE = "predictions.json"
_MAX_LISTED = 20


class PredictInputError(ValueError):
    """The images, classes or output folder given to ``ovcamo-predict`` cannot be used."""


def _listing(items: Sequence[str]) -> str:
    more = f" … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def find_images(spec: str) -> list[Path]:
    """The images ``spec`` names: a file, the image files of a folder (sorted), or a glob's
    matches (sorted, ``**`` recursive). Raises :class:`PredictInputError` when nothing matches."""
    path = Path(spec).expanduser()
    if problem := link_problem(path):
        raise PredictInputError(f"images={spec}: {problem}; point images= at the real files")
    if path.is_file():
        return [path]
    if path.is_dir():
        named = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        broken = [problem for p in named if (problem := link_problem(p))]
        if broken:
            raise PredictInputError(
                f"images={spec}: {_listing(sorted(broken))}; remove or repair the link"
            )
        found = sorted(p for p in named if p.is_file())
        if not found:
            raise PredictInputError(
                f"images={spec}: the folder holds no image file ({', '.join(IMAGE_SUFFIXES)})"
            )
        return found
    found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not found:
        raise PredictInputError(
            f"images={spec}: no file, folder or glob match; give an image file, a folder of "
            "images or a quoted glob such as 'photos/*.jpg'"
        )
    return found


def _names_from_file(path: Path) -> list[str]:
    if path.suffix.lower() == ".json":
        from ovcamo.data.ovcamo_format import DatasetFormatError, load_class_info

        try:
            classes = load_class_info(path)
        except (DatasetFormatError, ValueError) as e:
            raise PredictInputError(
                f"classes={path}: not a class_info.json ({e}); a text file lists one name per line"
            ) from e
        return [c.name for c in sorted(classes, key=lambda c: c.id)]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PredictInputError(f"classes={path}: cannot read it as UTF-8 text ({e})") from e
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def resolve_classes(spec: Any) -> list[str]:
    """Candidate class names from ``spec``: a list of names, ``ovcamo-test``, a ``.json`` class list
    (``class_info.json`` format, all its classes ordered by id), a text file with one name per line
    (blank lines and ``#`` comments skipped), or comma-separated names."""
    if isinstance(spec, str) and spec == OVCAMO_TEST:
        from ovcamo.data.ovcamo_format import class_names, load_class_info
        from ovcamo.data.world import PACKAGED_CLASS_LIST

        return class_names(load_class_info(PACKAGED_CLASS_LIST), "test")
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if path.is_file():
            names = _names_from_file(path)
        elif path.suffix.lower() in (".txt", ".json") or "/" in spec:
            raise PredictInputError(
                f"classes={spec}: class file not found; give a file with one name per line, a "
                f"class_info.json, a list such as '[owl,frog]', or {OVCAMO_TEST}"
            )
        else:
            names = [n.strip() for n in spec.split(",")]
    elif isinstance(spec, Sequence):
        names = [str(n).strip() for n in spec]
    else:
        raise PredictInputError(f"classes={spec!r}: expected a list, a file or {OVCAMO_TEST}")
    names = [n for n in names if n]
    if not names:
        raise PredictInputError(f"classes={spec}: no class name given")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PredictInputError(f"classes={spec}: names listed twice: {_listing(repeated)}")
    bad = [f"{n!r} {problem}" for n in names if (problem := name_part_problem(n))]
    if bad:
        raise PredictInputError(
            f"classes={spec}: class names become parts of file names, and {_listing(bad)}"
        )
    return names


def _check_inputs(images: Sequence[Path], names: Sequence[str], fmt: str) -> None:
    """Every problem found before any compute, in one message."""
    problems: list[str] = []
    by_stem: dict[str, list[str]] = defaultdict(list)
    for p in images:
        by_stem[p.stem].append(str(p))
    clashes = [" and ".join(v) for v in by_stem.values() if len(v) > 1]
    if clashes:
        problems.append(f"two images share an output name: {_listing(clashes)}")
    unreadable = []
    for p in images:
        try:
            # Opening parses the header: a file of no known image format raises here.
            with open_image(p):
                pass
        except (OSError, ValueError, SyntaxError) as e:
            unreadable.append(f"{p} ({e})")
    if unreadable:
        problems.append(f"unreadable image ({len(unreadable)}): {_listing(unreadable)}")
    bad_names = [n for n in names if "/" in n or (fmt == "ovcamo" and "]" in n)]
    if bad_names:
        problems.append(f"class names unusable in a file name: {_listing(bad_names)}")
    if problems:
        raise PredictInputError("; ".join(problems))


def _check_out_dir(out: Path) -> None:
    problem = out_dir_problem(out)
    if problem is not None:
        raise PredictInputError(f"out_dir={out}: {problem}; give a folder this command can create")
    if out.is_dir() and any(out.iterdir()) and not (out / RESULTS_FILE).is_file():
        raise PredictInputError(
            f"out_dir={out} already holds files that ovcamo-predict did not write; choose "
            "another out_dir (an earlier ovcamo-predict output there is replaced)"
        )


def predict_images(cfg: Any) -> Path | None:
    """Run the command (keys in ``ovcamo/conf/predict.yaml``); returns the output folder
    (``None`` after ``check=true``, which validates the inputs and loads the model only).

    Raises :class:`PredictInputError` for bad input; nothing is written then.
    """
    from ovcamo.engine.distributed import pick_device
    from ovcamo.models import load_model
    from ovcamo.models.predictor import as_rgb_array, predict
    from ovcamo.report.overlay import overlay_prediction

    if not cfg.get("checkpoint"):
        raise PredictInputError("give checkpoint=<checkpoint or run folder> (from ovcamo-train)")
    if not cfg.get("images"):
        raise PredictInputError("give images=<image file, folder or quoted glob>")
    fmt = str(cfg.get("format", "masks"))
    if fmt not in FORMATS:
        raise PredictInputError(f"format={fmt}: use one of {', '.join(FORMATS)}")
    if not cfg.get("out_dir"):
        raise PredictInputError("give out_dir=<folder for masks, overlays and predictions.json>")
    out = Path(str(cfg.out_dir)).expanduser()
    _check_out_dir(out)
    images = find_images(str(cfg.images))
    names = resolve_classes(cfg.get("classes", OVCAMO_TEST))
    _check_inputs(images, names, fmt)
    try:
        model = load_model(str(cfg.checkpoint), pick_device(str(cfg.get("device", "auto"))))
    except (FileNotFoundError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise PredictInputError(f"checkpoint={cfg.checkpoint}: {e}") from e
    if cfg.get("check"):
        print(
            f"ovcamo-predict: check passed: {len(images)} images, {len(names)} candidate classes, "
            f"results would go to {out}; nothing written (check=true)"
        )
        return None
    batch_size = max(1, int(cfg.get("batch_size", 8)))
    draw = bool(cfg.get("overlay", True))
    mask_dir = "predictions" if fmt == "ovcamo" else "masks"

    records: list[dict[str, Any]] = []
    failed: list[str] = []
    with staged_dir(out) as tmp:
        for start in range(0, len(images), batch_size):
            batch, arrays = [], []
            for p in images[start : start + batch_size]:
                try:
                    arrays.append(as_rgb_array(p))
                    batch.append(p)
                except (OSError, ValueError, SyntaxError) as e:
                    failed.append(f"{p} ({e})")
            if not batch or failed:
                continue  # the run will stop; the rest is only read, to list every bad file
            results = predict(model, arrays, names, batch_size=batch_size)
            for p, rgb, res in zip(batch, arrays, results, strict=True):
                mask_path = (
                    prediction_path(tmp / mask_dir, res.class_name, p.stem)
                    if fmt == "ovcamo"
                    else safe_join(tmp / mask_dir, f"{p.stem}.png", flat=True)
                )
                mask_name = mask_path.name
                write_png(mask_path, res.mask)
                record: dict[str, Any] = {
                    "image": str(p.resolve()),
                    "size": list(rgb.shape[:2]),
                    "mask": f"{mask_dir}/{mask_name}",
                    "class": res.class_name,
                    "score": res.score,
                    "class_probs": res.class_probs,
                }
                if draw:
                    label = f"{res.class_name} {res.score:.2f}"
                    write_png(
                        safe_join(tmp / "overlays", f"{p.stem}.png", flat=True),
                        overlay_prediction(rgb, res.mask, label),
                    )
                    record["overlay"] = f"overlays/{p.stem}.png"
                records.append(record)
        if failed:
            raise PredictInputError(f"unreadable image ({len(failed)}): {_listing(failed)}")
        atomic_write_json(
            tmp / RESULTS_FILE,
            {
                "checkpoint": str(Path(str(cfg.checkpoint)).resolve()),
                "classes": names,
                "format": fmt,
                "images": records,
            },
        )
    log.info("wrote %d predictions to %s", len(records), out)
    return out


def main(cfg: Any) -> Path | None:
    """Entry point of ``ovcamo-predict``: bad input → one paragraph on stderr, exit status 2."""
    try:
        out = predict_images(cfg)
    except PredictInputError as e:
        print(f"ovcamo-predict: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    if out is not None:
        print(f"results written to {out}")
    return out
