"""What produced a result: the toolkit's version and code, the git commit, the library versions.

``code_version()`` is what cached loop stages are keyed by: the package version plus a digest of
the installed source files (``.py``, ``.json`` and ``.yaml`` of ``ovcamo`` and ``generation``),
computed once per process. An upgrade changes the version; an editable install whose code was
edited changes the digest; either way no stage computed by other code is reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import generation
import ovcamo

#: Distributions whose versions decide a result, as ``run_info.json`` records them.
LIBRARIES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "timm",
    "segment-anything",
    "diffusers",
    "transformers",
    "hydra-core",
    "numpy",
)
SOURCE_SUFFIXES = (".py", ".json", ".yaml")


def _package_dirs() -> list[Path]:
    return [Path(p.__file__).resolve().parent for p in (ovcamo, generation)]


@cache
def code_digest() -> str:
    """SHA-256 of the toolkit's source files: their paths and bytes, in a fixed order."""
    h = hashlib.sha256()
    for root in _package_dirs():
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts
        )
        for path in files:
            h.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def code_version() -> str:
    """``<version>+<first 12 hex digits of code_digest()>``."""
    return f"{ovcamo.__version__}+{code_digest()[:12]}"


@cache
def git_state() -> dict[str, Any]:
    """``commit`` and ``dirty`` (tracked files changed) of the checkout the toolkit runs from;
    both ``None`` for an installed wheel (no checkout) or without ``git``."""
    root = _package_dirs()[0].parent
    if not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def library_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`LIBRARIES`; ``None`` where it is not installed."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict[str, Any]:
    """The block ``run_info.json`` records under ``"provenance"``."""
    git = git_state()
    return {
        "ovcamo": ovcamo.__version__,
        "code_version": code_version(),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
