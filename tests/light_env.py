"""The plain install (``pip install ovcamo``, no extras) made from the packages already installed:
a folder of links to every installed distribution except the extras' and ovcamo itself, so that
the toolkit can be run as such a user runs it, without downloading anything.

``python tests/light_env.py DEST`` builds one; ``--all`` keeps the extras (only ovcamo itself is
left out). ``.ci/wheel_check`` installs the built wheel on top of each.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ovcamo.extras import OPTIONAL_MODULES

#: What ``pip install "ovcamo[all]"`` adds to the plain install.
EXTRA_DISTRIBUTIONS = frozenset(dist for dist, _ in OPTIONAL_MODULES.values())
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _entries(distribution: str) -> set[str]:
    """The top-level names a distribution installed into its site folder."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    return {Path(str(f)).parts[0] for f in files if not str(f).startswith("..")}


def light_site(dest: Path, drop: Iterable[str] = EXTRA_DISTRIBUTIONS | {"ovcamo"}) -> Path:
    """Fill ``dest`` with links to the entries of every site folder on ``sys.path`` except those of
    the ``drop`` distributions; ``.pth`` files are left out (they would add folders back)."""
    hidden = set().union(*(_entries(d) for d in drop))
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sys.path:
        site = Path(entry)
        if not site.is_dir() or not any(site.glob("*.dist-info")):
            continue
        for item in site.iterdir():
            link = dest / item.name
            if item.name in hidden or item.suffix == ".pth" or link.exists():
                continue
            link.symlink_to(item)
    return dest


def run_light(
    site: Path, code: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` with nothing importable but ``site``, the standard library and the
    source tree (no other site folder: ``-S``)."""
    prelude = f"import site, sys; site.addsitedir({str(site)!r}); sys.path.insert(0, {str(SOURCE_ROOT)!r}); "
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + code, *args],
        cwd=cwd,
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        timeout=600,
    )


if __name__ == "__main__":
    drop = {"ovcamo"} if "--all" in sys.argv[2:] else EXTRA_DISTRIBUTIONS | {"ovcamo"}
    print(light_site(Path(sys.argv[1]), drop))
