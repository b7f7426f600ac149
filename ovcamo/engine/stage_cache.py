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


#: ``inputs(cfg, keys, **params)``: what a stage's key hashes; ``keys`` maps each stage it needs to
#: that stage's key in this plan (``None`` where the plan has no such stage).
InputsFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """One declaration of a stage graph.

    ``name`` names the declaration; a shared stage is planned once for every run (generators,
    variants, seeds) under that name, a per-run stage (``shared=False``) once per training run of
    :attr:`StageGraph.runs`, named by :attr:`StageGraph.run_name` (e.g. ``train/with/seed0``). ``kind`` is its cache folder and part of its key. ``needs`` are the declarations it
    depends on (declared before it): their keys go into its inputs (``None`` for one the plan
    lacks: whether a stage is planned is ``when``'s alone) and they run before it; a per-run
    stage's per-run needs are those of the same run. ``build(ctx, **params)`` returns the
    function ``fn(stage_dir) -> outputs`` that computes it; ``when(cfg)`` says whether a loop plans
    it at all; ``check(cfg, plan, name, cache_dir)``, when given, returns the problems ``check=true``
    finds for it (run once per declaration, on its first planned stage).
    """

    name: str
    kind: str
    inputs: InputsFn
    build: Callable[..., Callable[[Path], dict[str, Any]]]
    needs: tuple[str, ...] = ()
    shared: bool = True
    when: Callable[[Any], bool] = lambda cfg: True
    check: Callable[..., list[Any]] | None = None


@dataclass
class StagePlan:
    """Every planned stage of one config, in run order, with the inputs its key hashes (computed
    from the config alone, before any compute)."""

    graph: StageGraph
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    stages: dict[str, Stage] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        """The planned stages' names in the order they run: shared ones, then run by run."""
        return list(self.inputs)

    def key(self, name: str) -> str:
        return stage_key(self.kinds[name], self.inputs[name])

    def shared(self) -> list[str]:
        """The shared stages every training run depends on, in order."""
        return [n for n in self.inputs if self.stages[n].shared]

    def lanes(self) -> list[list[str]]:
        """The per-run stages, one list per run (they depend only on the shared stages and on each
        other, so runs go side by side)."""
        lanes: dict[str, list[str]] = {}
        for name in self.inputs:
            if not self.stages[name].shared:
                lanes.setdefault(content_hash(self.params[name]), []).append(name)
        return list(lanes.values())

    def name(self, stage: str, **params: Any) -> str:
        """The planned name of declaration ``stage`` for a run's ``params``."""
        return self.graph.name(stage, **params)

    def build(self, ctx: Any, name: str) -> Callable[[Path], dict[str, Any]]:
        """The function that computes stage ``name``."""
        return self.stages[name].build(ctx, **self.params[name])


@dataclass(frozen=True)
class StageGraph:
    """The stage declarations of a pipeline, in declaration order, and its training runs
    (``runs(cfg)``: the parameters of each run, in the order they run; ``run_name``: the name of a
    per-run stage, formatted with ``stage`` and the run's parameters)."""

    stages: tuple[Stage, ...]
    runs: Callable[[Any], list[dict[str, Any]]]
    run_name: str = "{stage}/{variant}/seed{seed}"

    def __post_init__(self) -> None:
        seen: dict[str, Stage] = {}
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage {stage.name!r} is declared twice")
            for need in stage.needs:
                if need not in seen:
                    raise ValueError(f"stage {stage.name!r} needs {need!r}, not declared before it")
                if stage.shared and not seen[need].shared:
                    raise ValueError(f"shared stage {stage.name!r} needs per-run stage {need!r}")
            seen[stage.name] = stage

    def stage(self, name: str) -> Stage:
        """The declaration called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} is declared")

    def name(self, stage: str, **params: Any) -> str:
        """The planned name of declaration ``stage`` for a run's ``params``."""
        declared = self.stage(stage)
        return declared.name if declared.shared else self.run_name.format(stage=stage, **params)

    def with_stage(self, stage: Stage, after: str) -> StageGraph:
        """A copy with ``stage`` declared right after the declaration ``after``."""
        i = self.stages.index(self.stage(after)) + 1
        return StageGraph((*self.stages[:i], stage, *self.stages[i:]), self.runs, self.run_name)

    def plan(self, cfg: Any) -> StagePlan:
        """Plan every stage ``cfg`` asks for: shared ones in declaration order, then each run's."""
        plan = StagePlan(self)

        def add(stage: Stage, params: dict[str, Any]) -> None:
            keys = {}
            for need in stage.needs:
                name = self.name(need, **params)
                keys[need] = plan.key(name) if name in plan.inputs else None
            name = self.name(stage.name, **params)
            plan.inputs[name] = stage.inputs(cfg, keys, **params)
            plan.kinds[name], plan.stages[name], plan.params[name] = stage.kind, stage, params

        for stage in self.stages:
            if stage.shared and stage.when(cfg):
                add(stage, {})
        for params in self.runs(cfg):
            for stage in self.stages:
                if not stage.shared and stage.when(cfg):
                    add(stage, params)
        return plan
