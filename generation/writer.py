"""The synthetic-set writer: an OVCamo-format folder that training mixes in
(docs/design.md, "Data format" and "Generation").

Layout::

    paths.json  class_info.json  sample_info.json  plan.json  summary.json
    train/image/<unique_id>.png  train/mask/<unique_id>.png  [train/alpha/<unique_id>.png]
    test/image/  test/mask/      (empty: synthetic sets only add training samples)
    journal/rank<r>.json         one per process: the samples and skips that rank finished

Every file is written atomically. A rank writes a sample's files first and its journal entry
second, so a killed run leaves at most one orphan sample file, which the restart rewrites with
the same bytes; ``sample_info.json`` is re-merged from all journals after every sample under a
file lock, so it is valid JSON at every moment and never lists a sample twice.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from generation.base import GeneratedSample
from generation.planner import Plan, PlanItem
from ovcamo.data import DataPaths, load_class_info, write_class_info
from ovcamo.data.io import atomic_write_json, safe_join, write_png
from ovcamo.data.ovcamo_format import STANDARD_LAYOUT

PATHS = STANDARD_LAYOUT


def shard_of(index: int, rank: int, world_size: int) -> bool:
    """Whether plan item ``index`` belongs to ``rank`` (round-robin, so shards stay balanced)."""
    return index % world_size == rank


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` from the environment ``torchrun`` sets; ``(0, 1)`` otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Journal:
    """What one rank has finished: sample_info entries and skips keyed by plan index."""

    samples: dict[int, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": [self.samples[i] for i in sorted(self.samples)],
            "skipped": [self.skipped[i] for i in sorted(self.skipped)],
        }

    @classmethod
    def read(cls, path: Path) -> Journal:
        if not path.is_file():
            return cls()
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                {int(s["plan_index"]): s for s in d["samples"]},
                {int(s["plan_index"]): s for s in d["skipped"]},
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: corrupt journal ({e}); delete it to regenerate its samples"
            ) from e


class SyntheticSetWriter:
    """Writes one rank's shard of a plan into ``root`` and merges every rank's journal.

    ``source`` is the dataset the plan was drawn from: its ``class_info.json`` is copied so the
    synthetic set knows the splits. ``generator`` and ``config_hash`` go into each sample's
    provenance.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        source: DataPaths,
        plan: Plan,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.root = Path(root)
        self.source = source
        self.plan = plan
        self.rank, self.world_size = rank, world_size
        self.journal_dir = self.root / "journal"
        self.journal_path = self.journal_dir / f"rank{rank}.json"
        self._prepare()
        self.journal = Journal.read(self.journal_path)
        self._drop_entries_without_files()
        self.class_ids = {c.name: c.id for c in load_class_info(self.root / PATHS["class_info"])}

    def _prepare(self) -> None:
        for key in ("train_image_dir", "train_mask_dir", "test_image_dir", "test_mask_dir"):
            (self.root / PATHS[key]).mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        if self.rank == 0:
            if not (self.root / PATHS["class_info"]).is_file():
                write_class_info(
                    self.root / PATHS["class_info"], load_class_info(self.source.class_info)
                )
            atomic_write_json(self.root / "paths.json", PATHS)
            plan_path = self.root / "plan.json"
            if not plan_path.is_file():
                self.plan.save(plan_path)
            if not (self.root / PATHS["sample_info"]).is_file():
                atomic_write_json(self.root / PATHS["sample_info"], [])
        else:
            # Rank 0 writes the shared files; the others must not race it for them.
            import time

            for _ in range(600):
                if (self.root / "paths.json").is_file() and (
                    self.root / PATHS["class_info"]
                ).is_file():
                    break
                time.sleep(0.1)

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files of writes a kill interrupted: never renamed, never part of the set.

        A rank removes only its own (the files of its shard's items, its journal); rank 0 also those
        of the shared json files, under the merge lock, so no live write of another rank is touched.
        """

        def target(tmp: Path) -> str:
            # atomic_write_bytes names them ".<file name>.<random>.tmp"
            return tmp.name[1:].rsplit(".", 2)[0]

        own = {
            f"{it.unique_id}.png"
            for it in self.plan.items
            if shard_of(it.index, self.rank, self.world_size)
        }
        for sub in ("train/image", "train/mask", "train/alpha"):
            d = self.root / sub
            for tmp in d.glob(".*.tmp") if d.is_dir() else ():
                if target(tmp) in own:
                    tmp.unlink(missing_ok=True)
        for tmp in self.journal_dir.glob(f".rank{self.rank}.json.*.tmp"):
            tmp.unlink(missing_ok=True)
        if self.rank == 0:
            with self._lock():
                for tmp in self.root.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    def _drop_entries_without_files(self) -> None:
        for i, s in list(self.journal.samples.items()):
            if not (
                self.image_path(s["unique_id"]).is_file()
                and self.mask_path(s["unique_id"]).is_file()
            ):
                del self.journal.samples[i]

    def image_path(self, unique_id: str) -> Path:
        return safe_join(self.root / PATHS["train_image_dir"], f"{unique_id}.png", flat=True)

    def mask_path(self, unique_id: str) -> Path:
        return safe_join(self.root / PATHS["train_mask_dir"], f"{unique_id}.png", flat=True)

    def alpha_path(self, unique_id: str) -> Path:
        return safe_join(self.root / "train" / "alpha", f"{unique_id}.png", flat=True)

    def done_indices(self) -> set[int]:
        """Plan indices finished (written or skipped) by any rank, this one included."""
        done = set(self.journal.samples) | set(self.journal.skipped)
        for path in self.journal_dir.glob("rank*.json"):
            if path != self.journal_path:
                j = Journal.read(path)
                done |= set(j.samples) | set(j.skipped)
        return done

    def pending(self) -> list[PlanItem]:
        """This rank's plan items not yet finished, in plan order."""
        done = self.done_indices()
        return [
            it
            for it in self.plan.items
            if shard_of(it.index, self.rank, self.world_size) and it.index not in done
        ]

    def write(self, item: PlanItem, sample: GeneratedSample) -> dict[str, Any]:
        """Write one sample's files, then its journal entry, then the merged ``sample_info.json``."""
        mask = np.asarray(sample.mask).astype(bool)
        image = np.asarray(sample.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{item.unique_id}: generator returned image {image.dtype} {image.shape}"
            )
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"{item.unique_id}: image {image.shape[:2]} and mask {mask.shape} differ"
            )
        write_png(self.image_path(item.unique_id), image)
        write_png(self.mask_path(item.unique_id), mask.astype(np.uint8) * 255)
        entry: dict[str, Any] = {
            "unique_id": item.unique_id,
            "base_class": item.class_name,
            "image": f"{item.unique_id}.png",
            "mask": f"{item.unique_id}.png",
            "id": item.index,
            "synthetic": True,
            "generator": self.plan.generator,
            "source_unique_id": item.source_unique_id,
            "seed": item.seed,
            "config_hash": self.plan.config_hash,
            "class_id": self.class_ids.get(item.class_name),
            "plan_index": item.index,
        }
        if item.outside_ov_protocol:
            entry["outside_ov_protocol"] = True
        if sample.alpha is not None:
            alpha = np.clip(np.rint(np.asarray(sample.alpha, np.float32) * 255), 0, 255)
            write_png(self.alpha_path(item.unique_id), alpha.astype(np.uint8))
            entry["alpha"] = f"train/alpha/{item.unique_id}.png"
        entry.update({k: v for k, v in sample.extra.items() if k not in entry})
        self.journal.samples[item.index] = entry
        atomic_write_json(self.journal_path, self.journal.to_json(), indent=None)
        self.merge()
        return entry

    def skip(self, item: PlanItem, reason: str) -> None:
        """Record that ``item`` cannot be generated, with the generator's reason."""
        self.journal.skipped[item.index] = {
            "plan_index": item.index,
            "unique_id": item.unique_id,
            "class_name": item.class_name,
            "source_unique_id": item.source_unique_id,
            "reason": reason,
        }
        atomic_write_json(self.journal_path, self.journal.to_json(), indent=None)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".merge.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def merge(self) -> list[dict[str, Any]]:
        """Rewrite ``sample_info.json`` from every rank's journal (plan order, one entry per index)."""
        with self._lock():
            samples: dict[int, dict[str, Any]] = {}
            for path in sorted(self.journal_dir.glob("rank*.json")):
                samples.update(Journal.read(path).samples)
            merged = [samples[i] for i in sorted(samples)]
            atomic_write_json(self.root / PATHS["sample_info"], merged)
        return merged

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Merge and write ``summary.json``: per-class counts, skips with reasons, completeness."""
        merged = self.merge()
        skipped: dict[int, dict[str, Any]] = {}
        for path in sorted(self.journal_dir.glob("rank*.json")):
            skipped.update(Journal.read(path).skipped)
        reasons = Counter(s["reason"].split(":", 1)[0] for s in skipped.values())
        summary = {
            "generator": self.plan.generator,
            "config_hash": self.plan.config_hash,
            "outside_ov_protocol": self.plan.outside_ov_protocol,
            # Generator weights trained on images that may be OVCamo test images (their samples say so).
            "weights_may_overlap_ovcamo_test": any(
                s.get("weights_may_overlap_ovcamo_test", False) for s in merged
            ),
            "planned": len(self.plan.items),
            "written": len(merged),
            "skipped": len(skipped),
            "complete": len(merged) + len(skipped) == len(self.plan.items),
            "per_class": dict(Counter(s["base_class"] for s in merged)),
            "skip_reasons": dict(reasons),
            "skips": [skipped[i] for i in sorted(skipped)],
            **(extra or {}),
        }
        with self._lock():
            atomic_write_json(self.root / "summary.json", summary)
        return summary
