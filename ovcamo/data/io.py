"""File I/O shared by every part of the toolkit: atomic writes, safe paths, image and mask reading."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

# Truncated files must raise, not decode half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# :func:`open_image` refuses what PIL would only warn about, naming the file; the warning itself
# would be a second, anonymous line on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


class ImageTooLargeError(OSError):
    """An image file declares more pixels than :data:`PIL.Image.MAX_IMAGE_PIXELS` (a decompression
    bomb, or a picture far larger than any camouflage photograph); an ``OSError`` so that every
    reader that reports unreadable files reports it too."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open(path)`` that refuses an image of more than ``PIL.Image.MAX_IMAGE_PIXELS``
    pixels before decoding any of it, with :class:`ImageTooLargeError` naming the file."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageTooLargeError(_too_large(f"{found.group(1)} pixels" if found else "")) from e
    width, height = im.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        im.close()
        raise ImageTooLargeError(_too_large(f"{width}×{height} pixels"))
    return im


def _too_large(size: str) -> str:
    return (
        f"its header declares {size or 'too many pixels'}, more than the "
        f"{Image.MAX_IMAGE_PIXELS} ovcamo decodes (a decompression bomb or a damaged file): "
        "replace it with an image of ordinary size"
    )


def link_problem(path: str | os.PathLike) -> str | None:
    """Why ``path``, a symbolic link, leads to no file (a loop, or a missing target), or ``None``
    (not a link, or a link that resolves)."""
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path} is a symbolic link loop (it leads back to itself)"
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    return None


class PathEscapeError(ValueError):
    """A name taken from a data file would resolve outside its root directory."""


def name_part_problem(name: str) -> str | None:
    """Why ``name`` (a class name or sample id from a data file) cannot be part of a file name
    the toolkit writes, or ``None``: it may hold no path separator, no NUL and not be ``.``/``..``."""
    if "/" in name or "\\" in name:
        return "contains a path separator ('/' or '\\')"
    if "\x00" in name:
        return "contains a NUL character"
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    return None


def safe_join(root: str | os.PathLike, name: str, *, flat: bool = False) -> Path:
    """Join ``name`` (taken from a data file) under ``root`` and refuse anything that escapes it.

    Absolute names, ``..`` components and symlinks pointing outside ``root`` are refused. With
    ``flat``, ``name`` must also be one file name directly inside ``root`` (no separator at all):
    the form of every file name the toolkit builds from class names and sample ids.
    """
    root_path = Path(root).resolve()
    if not name or os.path.isabs(name) or "\x00" in name:
        raise PathEscapeError(f"refusing path {name!r}: must be a relative name under {root_path}")
    if flat and (problem := name_part_problem(name)):
        raise PathEscapeError(f"refusing file name {name!r} under {root_path}: it {problem}")
    try:
        candidate = (root_path / name).resolve()
    except (RuntimeError, OSError):
        # A symbolic link loop (RuntimeError before Python 3.13): it leads to no file, which
        # the reader reports (see link_problem); the name itself must still stay inside root.
        candidate = Path(os.path.normpath(root_path / name))
    if candidate != root_path and root_path not in candidate.parents:
        raise PathEscapeError(f"refusing path {name!r}: it resolves outside {root_path}")
    return candidate


def prediction_path(folder: str | os.PathLike, class_name: str, unique_id: str) -> Path:
    """Where the OVCOS protocol keeps one prediction: ``<folder>/[<class_name>]<unique_id>.png``,
    through :func:`safe_join` so that names from data files never leave ``folder``."""
    return safe_join(folder, f"[{class_name}]{unique_id}.png", flat=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file owner-only; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def out_dir_problem(out_dir: str | os.PathLike) -> str | None:
    """Why no folder of results could be written at ``out_dir`` (a file in the way, or no write
    permission where it would be created), or ``None``; commands check this before any work."""
    out_dir = Path(out_dir)
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not existing.is_dir():
        return "it is a file" if existing == out_dir else f"{existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden sibling folder of ``final`` to fill; when the block succeeds it takes
    ``final``'s place (an existing ``final`` is moved aside first and removed only afterwards), and
    when it raises it is removed, leaving ``final`` as it was. No reader ever sees a half-written
    ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 HxW or HxWxC array as PNG bytes."""
    import io

    if array.dtype != np.uint8:
        raise TypeError(f"PNG arrays must be uint8, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Atomically write a uint8 array as a PNG file."""
    atomic_write_bytes(path, encode_png(array))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint16, np.int32, np.uint32, np.int64) or np.issubdtype(
        arr.dtype, np.integer
    ):
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(np.round(arr.astype(np.float64) / peak * 255.0), 0, 255).astype(np.uint8)
    arr = arr.astype(np.float64)
    peak = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
    return np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB uint8 ``H×W×3``; grayscale, palette, RGBA and 16-bit files are converted."""
    with open_image(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = _to_uint8(np.asarray(im))
            return np.repeat(arr[..., None], 3, axis=2)
        if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA").convert("RGB")
        elif im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel uint8 ``H×W`` map (16-bit and float files are rescaled to 0–255)."""
    with open_image(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _to_uint8(np.asarray(im))
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8).copy()


def mask_foreground(arr: np.ndarray) -> np.ndarray:
    """Bool ``H×W`` foreground of a decoded mask (``H×W`` or ``H×W×C``): any non-zero pixel of its
    first channel or, in colour, of its three colour channels (the official reader's rule)."""
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    return arr > 0


def mask_is_empty(im: Image.Image) -> bool:
    """Whether a mask image has no foreground pixel under :func:`mask_foreground`'s rule; single-band
    and RGB masks are tested by PIL without building an array (about twice as fast)."""
    if len(im.getbands()) == 1 or im.mode == "RGB":
        return im.getbbox() is None
    return not mask_foreground(np.asarray(im)).any()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a GT mask as bool ``H×W``: any non-zero pixel is foreground (see :func:`mask_foreground`)."""
    with open_image(path) as im:
        im.load()
        arr = np.asarray(im)
    return mask_foreground(arr)
