"""A cache of finished pipeline stages, keyed by a content hash of their inputs and of the code.

A stage runs in ``<root>/<kind>/<key>``; it counts as done only once its ``stage.json`` marker
exists, written atomically after the stage's own outputs. A stage killed half-way has no marker,
so the next run reruns it in the same folder, where it finds what it had written (checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ovcamo.data.io import atomic_write_json
from ovcamo.provenance import code_version

log = logging.getLogger(__name__)

MARKER = "stage.json"


def content_hash(obj: Any) -> str:
    """A short, stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def stage_key(kind: str, inputs: Mapping[str, Any]) -> str:
    """The key of a stage: its kind, its inputs and :func:`ovcamo.provenance.code_version`, so that
    a stage computed by other code (an upgrade, an edited checkout) is never reused."""
    return content_hash({"kind": kind, "code": code_version(), **inputs})


def to_plain(node: Any) -> Any:
    """A resolved plain container of a config node (or the value itself)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class StageRecord:
    """What one stage did in this run: ``status`` is ``ran`` or ``cached``.

    ``seconds``: wall time in this run; ``compute_seconds`` and ``cpu_seconds``: wall and CPU time
    when the stage was computed (CPU time is much less inflated than wall time on a shared machine).
    """

    name: str
    key: str
    status: str
    seconds: float
    compute_seconds: float
    directory: Path
    outputs: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float = float("nan")


class StageCache:
    """Runs named stages once per content key; a finished stage is skipped on every later run."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.records: list[StageRecord] = []

    def directory(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def is_done(self, kind: str, key: str) -> bool:
        return self._load(self.directory(kind, key)) is not None

    def run(
        self,
        name: str,
        kind: str,
        inputs: Mapping[str, Any],
        fn: Callable[[Path], dict[str, Any]],
    ) -> StageRecord:
        """Run ``fn(stage_dir) -> outputs`` unless a finished stage with the same inputs exists."""
        key = stage_key(kind, inputs)
        directory = self.directory(kind, key)
        t0 = time.perf_counter()
        done = self._load(directory)
        if done is not None:
            record = StageRecord(
                name,
                key,
                "cached",
                time.perf_counter() - t0,
                float(done["compute_seconds"]),
                directory,
                done["outputs"],
                float(done.get("cpu_seconds", float("nan"))),
            )
            log.info("stage %s: cached (%s)", name, directory)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            log.info("stage %s: running in %s", name, directory)
            c0 = cpu_seconds()
            outputs = fn(directory)
            seconds = time.perf_counter() - t0
            cpu = cpu_seconds() - c0
            atomic_write_json(
                directory / MARKER,
                {
                    "name": name,
                    "kind": kind,
                    "key": key,
                    "inputs": inputs,
                    "code_version": code_version(),
                    "outputs": outputs,
                    "compute_seconds": seconds,
                    "cpu_seconds": cpu,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
            record = StageRecord(name, key, "ran", seconds, seconds, directory, outputs, cpu)
            log.info("stage %s: done in %.1f s (%.1f CPU s)", name, seconds, cpu)
        self.records.append(record)
        return record

    @staticmethod
    def _load(directory: Path) -> dict[str, Any] | None:
        marker = directory / MARKER
        if not marker.is_file():
            return None
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        # Outputs that live outside the stage folder (e.g. the world's own cache) may have been deleted.
        for value in done.get("outputs", {}).values():
            if isinstance(value, str) and value.startswith("/") and not Path(value).exists():
                return None
        return done
