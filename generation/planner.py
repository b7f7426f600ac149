"""The rare-class planner: which train classes are rare, how many samples each gets,
and from which source objects. The plan is data (``plan.json``) written before generation starts,
so a resumed run finishes the same plan (docs/design.md, "Generation")."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ovcamo.data import (
    ClassInfo,
    DataPaths,
    Record,
    holdout_split,
    load_class_info,
    resolve_records,
)
from ovcamo.data.io import atomic_write_json
from ovcamo.data.ovcamo_format import ERRORS

log = logging.getLogger(__name__)

RULES = ("quantile", "target", "k_rarest")


class PlanError(ValueError):
    """The planner's settings, the dataset or a stored plan do not allow a plan."""


@dataclass(frozen=True)
class PlanItem:
    """One sample to generate: ``index`` is its place in the plan (and its shard key)."""

    index: int
    class_name: str
    source_unique_id: str
    source_split: str
    seed: int
    unique_id: str
    outside_ov_protocol: bool = False


@dataclass
class Plan:
    """What a run generates. ``counts`` are the source train counts the rule was applied to;
    ``source_validation`` holds, per split, the validation report of the samples the sources were
    drawn from (samples it found unusable are never sources)."""

    generator: str
    config_hash: str
    rule: str
    counts: dict[str, int]
    targets: dict[str, int]
    items: list[PlanItem] = field(default_factory=list)
    outside_ov_protocol: bool = False
    source_validation: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["items"] = [asdict(i) for i in self.items]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        items = [PlanItem(**i) for i in d["items"]]
        return cls(
            generator=d["generator"],
            config_hash=d["config_hash"],
            rule=d["rule"],
            counts=dict(d["counts"]),
            targets=dict(d["targets"]),
            items=items,
            outside_ov_protocol=bool(d.get("outside_ov_protocol", False)),
            source_validation=dict(d.get("source_validation", {})),
        )

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise PlanError(
                f"{path}: not a plan written by generation.planner ({e}); delete it or set "
                "out_dir to a new folder"
            ) from e

    def excluded_sources(self) -> str | None:
        """One line on the samples validation kept out of the sources, or ``None``."""
        parts = []
        for split, report in self.source_validation.items():
            bad = report["n_checked"] - report["n_kept"]
            if bad:
                counts, examples = report["counts"], report["examples"]
                kinds = "; ".join(
                    f"{k} {counts[k]} (e.g. {', '.join(examples[k])})"
                    for k in ERRORS
                    if counts.get(k)
                )
                parts.append(f"{bad} of {report['n_checked']} {split} samples: {kinds}")
        return "excluded from the sources: " + " | ".join(parts) if parts else None


def select_rare_classes(
    counts: Mapping[str, int],
    rule: str,
    *,
    quantile: float = 0.5,
    target_count: int | None = None,
    k: int = 3,
) -> tuple[list[str], int]:
    """Pick the rare classes of ``counts`` (train samples per class) and the count to fill them to.

    ``quantile``: classes strictly below the ``quantile`` of the counts, filled up to it;
    ``target``: classes strictly below ``target_count``, filled up to it;
    ``k_rarest``: the ``k`` rarest (ties by name), filled up to the next class's count
    (the largest count when every class is chosen). Returns ``(class names, fill target)``.
    """
    if not counts:
        raise PlanError("no train samples to plan from")
    names = sorted(counts, key=lambda c: (counts[c], c))
    values = np.array([counts[c] for c in names], dtype=np.float64)
    if rule == "quantile":
        if not 0.0 < quantile <= 1.0:
            raise PlanError(f"planner.quantile must be in (0, 1], got {quantile}")
        target = int(math.ceil(float(np.quantile(values, quantile))))
        rare = [c for c in names if counts[c] < target]
    elif rule == "target":
        if target_count is None or target_count <= 0:
            raise PlanError("planner.rule=target needs planner.target_count > 0")
        target = int(target_count)
        rare = [c for c in names if counts[c] < target]
    elif rule == "k_rarest":
        if k <= 0:
            raise PlanError(f"planner.k must be positive, got {k}")
        rare = names[:k]
        target = int(values[k]) if k < len(names) else int(values.max())
    else:
        raise PlanError(f"planner.rule must be one of {RULES}, got {rule!r}")
    return rare, target


def item_seed(base_seed: int, class_name: str, index: int) -> int:
    """A seed that depends on the class and the sample's number, not on plan order or rank."""
    digest = hashlib.sha256(f"{base_seed}:{class_name}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _per_class(
    counts: Mapping[str, int], rare: Sequence[str], target: int, cfg: Mapping[str, Any]
) -> dict[str, int]:
    per_class = cfg.get("per_class")
    cap = cfg.get("max_per_class")
    out = {}
    for c in rare:
        n = int(per_class) if per_class is not None else max(0, target - counts[c])
        if cap is not None:
            n = min(n, int(cap))
        out[c] = n
    return out


def make_plan(
    paths: DataPaths,
    cfg: Mapping[str, Any],
    *,
    generator: str,
    config_hash: str,
    holdout_fraction: float = 0.0,
    holdout_seed: int = 0,
    classes: Sequence[ClassInfo] | None = None,
    strict: bool = False,
) -> Plan:
    """Plan a run over the dataset at ``paths`` with the ``planner`` config node ``cfg``.

    Sources come from the training part of the train split: the held-out base-validation part
    (``holdout_fraction``/``holdout_seed``, as the engine splits it) is never a source. Test-split
    classes are planned only with ``allow_novel: true`` and listed in ``novel_classes``; their
    items and the plan are then marked ``outside_ov_protocol``.

    Sources are validated first (missing, unreadable or truncated files, as the trainer's loader
    checks them, which also keeps the held-out part identical to the trainer's): unusable samples
    are never sources, and the plan's ``source_validation`` says how many were excluded and why;
    with ``strict`` any unusable sample raises :class:`~ovcamo.data.DatasetValidationError`.
    """
    bad = [
        f"planner.{key}={cfg.get(key)!r}"
        for key in ("per_class", "max_per_class", "novel_per_class")
        if cfg.get(key) is not None
        and (isinstance(cfg.get(key), bool) or not isinstance(cfg.get(key), int) or cfg[key] < 1)
    ]
    if bad:
        raise PlanError(
            f"{', '.join(bad)}: a count of samples per class must be a whole number, 1 or more "
            "(null: the rule's own count; to generate nothing, do not run the generator)"
        )
    classes = list(classes) if classes is not None else load_class_info(paths.class_info)
    records, report = resolve_records(paths, "train", classes, strict=strict)
    validation = {"train": report.to_json()}
    if not records:
        raise PlanError(f"no usable train samples to plan from: {report.summary()}")
    if holdout_fraction > 0:
        records, _ = holdout_split(records, holdout_fraction, holdout_seed)
    by_class: dict[str, list[Record]] = {}
    for r in records:
        by_class.setdefault(r.class_name, []).append(r)
    counts = Counter({c.name: 0 for c in classes if c.split == "train"})
    counts.update(r.class_name for r in records)
    sourced = {c: n for c, n in counts.items() if n > 0}
    rare, target = select_rare_classes(
        sourced,
        str(cfg.get("rule", "quantile")),
        quantile=float(cfg.get("quantile", 0.5)),
        target_count=cfg.get("target_count"),
        k=int(cfg.get("k", 3)),
    )
    amounts = _per_class(counts, rare, target, cfg)
    targets = {c: counts[c] + amounts[c] for c in rare}

    novel: dict[str, list[Record]] = {}
    if cfg.get("allow_novel", False):
        test_names = {c.name for c in classes if c.split == "test"}
        wanted = list(cfg.get("novel_classes") or [])
        unknown = [c for c in wanted if c not in test_names]
        if unknown:
            raise KeyError(f"planner.novel_classes names classes not in the test split: {unknown}")
        test_records, test_report = resolve_records(paths, "test", classes, strict=strict)
        validation["test"] = test_report.to_json()
        for r in test_records:
            if r.class_name in wanted:
                novel.setdefault(r.class_name, []).append(r)
        n_novel = cfg.get("novel_per_class") or cfg.get("per_class")
        if not n_novel:
            raise PlanError("planner.allow_novel needs planner.novel_per_class (or per_class) > 0")
        n_novel = int(n_novel)
        for c in wanted:
            amounts[c] = n_novel if novel.get(c) else 0
    elif cfg.get("novel_classes"):
        raise PlanError("planner.novel_classes is set but planner.allow_novel is false")

    base_seed = int(cfg.get("seed", 0))
    prefix = str(cfg.get("id_prefix") or generator)
    items: list[PlanItem] = []
    for c in sorted(amounts, key=lambda c: (c in novel, c)):
        pool = novel.get(c) or by_class.get(c, [])
        if not pool or amounts[c] == 0:
            continue
        order = np.random.default_rng(item_seed(base_seed, c, -1)).permutation(len(pool))
        for j in range(amounts[c]):
            src = pool[int(order[j % len(pool)])]
            index = len(items)
            items.append(
                PlanItem(
                    index=index,
                    class_name=c,
                    source_unique_id=src.unique_id,
                    source_split=src.split,
                    seed=item_seed(base_seed, c, j),
                    unique_id=f"{prefix}_{index:06d}_{c}",
                    outside_ov_protocol=c in novel,
                )
            )
    plan = Plan(
        generator=generator,
        config_hash=config_hash,
        rule=str(cfg.get("rule", "quantile")),
        counts=dict(counts),
        targets=targets,
        items=items,
        outside_ov_protocol=bool(novel),
        source_validation=validation,
    )
    excluded = plan.excluded_sources()
    if excluded:
        log.warning("planner: %s", excluded)
    return plan
