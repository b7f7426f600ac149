"""Training data with synthetic sets mixed in at a fixed share of every batch
(docs/design.md, "Engine, loop, reports").

A training set is a list of *sources*: the real dataset's training part first, then one source per
synthetic set (an OVCamo-format folder with ``paths.json`` whose samples live in its train split).
:class:`MixedBatchSampler` decides, per epoch and from the seed alone, which sample of which source
fills every slot of every batch and which augmentation seed it gets; so a run restarted at batch
``b`` of epoch ``e`` sees exactly what the uninterrupted run saw, with any number of workers.

Open-vocabulary protocol: synthetic samples of test (novel) classes are refused unless
``data.allow_novel_synthetic=true``; a run that then uses them is marked ``outside_ov_protocol``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from ovcamo.data.ovcamo_format import (
    ClassInfo,
    DataPaths,
    Record,
    ValidationReport,
    load_class_info,
    load_sample_info,
    resolve_records,
)
from ovcamo.data.samples import holdout_split, load_sample

log = logging.getLogger(__name__)

OUTSIDE_OV_PROTOCOL = (
    "this run trains on synthetic samples of novel (test) classes: it is OUTSIDE the "
    "open-vocabulary protocol and its novel-class numbers are not comparable to OVCOS results"
)


class SyntheticSetError(ValueError):
    """A synthetic set cannot be mixed in (missing files, unknown or novel classes, bad shares)."""


@dataclass
class Source:
    """One pool of training records: the real training part or one synthetic set."""

    name: str
    records: list[Record]
    synthetic: bool
    report: ValidationReport | None = None
    novel_classes: list[str] = field(default_factory=list)


#: A slot of a batch: (source index, record index in that source, augmentation seed).
Slot = tuple[int, int, int]


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)[0] >> 1)


def load_synthetic_source(
    directory: str | Path,
    base_classes: Sequence[ClassInfo],
    *,
    allow_novel: bool,
    strict: bool,
    check_files: str = "header",
) -> Source:
    """Read a synthetic set and check its classes against the real dataset's class list.

    Every sample's ``base_class`` must be a class of the real dataset; samples of its test classes
    raise :class:`SyntheticSetError` unless ``allow_novel``.
    """
    directory = Path(directory).expanduser()
    paths_json = directory / "paths.json"
    if not paths_json.is_file():
        raise SyntheticSetError(
            f"data.synthetic entry {directory} is not an OVCamo-format synthetic set: "
            f"{paths_json} is missing (sets written by ovcamo-generate have one)"
        )
    paths = DataPaths.from_paths_json(paths_json)
    split_of = {c.name: c.split for c in base_classes}
    samples = load_sample_info(paths.sample_info)
    unknown = sorted({s.base_class for s in samples if s.base_class not in split_of})
    if unknown:
        raise SyntheticSetError(
            f"{paths.sample_info}: classes {unknown} are not in the training dataset's class list"
        )
    novel = sorted({s.base_class for s in samples if split_of[s.base_class] == "test"})
    if novel and not allow_novel:
        n = sum(split_of[s.base_class] == "test" for s in samples)
        raise SyntheticSetError(
            f"{paths.sample_info}: {n} samples of novel (test) classes {novel[:8]}"
            f"{' …' if len(novel) > 8 else ''}; training on them breaks the open-vocabulary "
            "protocol. Regenerate the set for base classes only, or set "
            "data.allow_novel_synthetic=true to run outside the protocol."
        )
    # Synthetic samples are all stored in the set's train folders, whatever their class split is.
    classes = [
        ClassInfo(c.name, c.id, c.super_class, c.sub_class, "train", c.num_samples)
        for c in base_classes
    ]
    records, report = resolve_records(
        paths, "train", classes, samples, strict=strict, check_files=check_files
    )
    return Source(str(directory), records, True, report, novel)


def load_sources(
    data_cfg: Mapping[str, Any],
    paths: DataPaths,
    *,
    check_files: str = "header",
) -> list[Source]:
    """Real training part (base classes minus the held-out part) plus every ``data.synthetic`` set."""
    classes = load_class_info(paths.class_info)
    strict = bool(data_cfg.get("strict", False))
    records, report = resolve_records(
        paths,
        "train",
        classes,
        load_sample_info(paths.sample_info),
        strict=strict,
        check_files=check_files,
    )
    kept, _ = holdout_split(
        records, float(data_cfg.get("holdout_fraction", 0.0)), int(data_cfg.get("holdout_seed", 0))
    )
    sources = [Source("real", kept, False, report)]
    for directory in data_cfg.get("synthetic") or []:
        sources.append(
            load_synthetic_source(
                directory,
                classes,
                allow_novel=bool(data_cfg.get("allow_novel_synthetic", False)),
                strict=strict,
                check_files=check_files,
            )
        )
    return sources


def source_shares(data_cfg: Mapping[str, Any], sources: Sequence[Source]) -> list[float]:
    """Share of every batch that each source fills (real first); they sum to 1.

    ``data.synthetic_weights`` gives each synthetic set its own share; otherwise
    ``data.synthetic_ratio`` is split across the sets in proportion to their sizes; a ratio of 0
    with sets given means their samples simply join the pool (shares by size).
    """
    synth = sources[1:]
    weights = data_cfg.get("synthetic_weights")
    ratio = float(data_cfg.get("synthetic_ratio", 0.0) or 0.0)
    sizes = [len(s.records) for s in sources]
    if not synth:
        return [1.0]
    if weights is not None:
        weights = [float(w) for w in weights]
        if ratio:
            raise SyntheticSetError("set data.synthetic_ratio or data.synthetic_weights, not both")
        if len(weights) != len(synth):
            raise SyntheticSetError(
                f"data.synthetic_weights has {len(weights)} entries for {len(synth)} synthetic sets"
            )
        shares = weights
    elif ratio:
        total = sum(sizes[1:])
        shares = [ratio * n / total if total else 0.0 for n in sizes[1:]]
    else:
        total = sum(sizes)
        return [n / total for n in sizes]
    if any(w < 0 for w in shares) or sum(shares) >= 1.0:
        raise SyntheticSetError(
            f"synthetic shares {shares} must be non-negative and sum to less than 1"
        )
    for s, w in zip(synth, shares, strict=True):
        if w > 0 and not s.records:
            raise SyntheticSetError(f"synthetic set {s.name} has no usable samples")
    return [1.0 - sum(shares), *shares]


class MixedBatchSampler(Sampler[list[Slot]]):
    """Global batches of ``batch_size`` slots, each source filling its share of every batch.

    An epoch visits every real sample once (in a seeded permutation); synthetic sources are drawn
    from seeded permutations, cycled when exhausted. Slot counts per batch follow cumulative
    rounding, so over an epoch every source gets exactly its share. Under DDP every global batch
    is split over the ``world_size`` ranks (rank ``r`` takes slots ``r, r + world_size, …``), so
    ``batch_size`` must be a multiple of ``world_size`` and a step sees the same samples on any
    number of processes. ``start`` skips the first batches of the epoch, for resuming.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        shares: Sequence[float],
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size % world_size:
            raise ValueError(
                f"train.batch_size={batch_size} is the global batch and must be a multiple of "
                f"the {world_size} processes"
            )
        if not sizes or sizes[0] == 0:
            raise ValueError("the real training part is empty")
        self.sizes, self.shares = list(sizes), list(shares)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    @property
    def num_global_batches(self) -> int:
        return math.ceil(self.sizes[0] / (self.batch_size * self.shares[0]))

    def __len__(self) -> int:
        return self.num_global_batches

    def _slot_counts(self, n_batches: int) -> np.ndarray:
        """``n_batches × n_sources`` slot counts; each row sums to ``batch_size``.

        Every batch gives its slots to the sources furthest behind their cumulative target
        (largest-remainder apportionment), so no source drifts more than one slot from its share.
        """
        shares = np.asarray(self.shares, dtype=np.float64)
        counts = np.zeros((n_batches, len(shares)), dtype=np.int64)
        assigned = np.zeros(len(shares))
        for b in range(n_batches):
            desired = np.maximum((b + 1) * self.batch_size * shares - assigned, 0.0)
            desired *= self.batch_size / desired.sum()
            base = np.floor(desired + 1e-9)
            rest = self.batch_size - int(base.sum())
            base[np.argsort(-(desired - base), kind="stable")[:rest]] += 1
            counts[b] = base
            assigned += base
        return counts

    def epoch_batches(self, epoch: int) -> list[list[Slot]]:
        """Every global batch of ``epoch`` (all ranks), deterministic in ``(seed, epoch)``."""
        n_batches = self.num_global_batches
        counts = self._slot_counts(n_batches)
        streams: list[Iterator[int]] = []
        for s, size in enumerate(self.sizes):
            rng = np.random.default_rng([self.seed, epoch, s])
            if s == 0:
                order = rng.permutation(size)
                # The last batches may ask for more real samples than remain: wrap around.
                need = int(counts[:, 0].sum())
                order = np.resize(order, need) if need > size else order
                streams.append(iter(order.tolist()))
            else:
                streams.append(_cycle_permutations(rng, size))
        batches, position = [], 0
        for b in range(n_batches):
            batch: list[Slot] = []
            for s, stream in enumerate(streams):
                for _ in range(int(counts[b, s])):
                    batch.append((s, next(stream), _sample_seed(self.seed, epoch, position)))
                    position += 1
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[Slot]]:
        for batch in self.epoch_batches(self.epoch)[self.start :]:
            yield batch[self.rank :: self.world_size]


def _cycle_permutations(rng: np.random.Generator, size: int) -> Iterator[int]:
    while True:
        yield from rng.permutation(size).tolist()


class MixedDataset(Dataset):
    """Reads slots ``(source, index, seed)``; a sample that cannot be read yields a skip marker.

    ``__getitem__`` returns the transformed sample with ``synthetic`` and ``source`` added, or
    ``{"skipped": unique_id, "error": message}`` for a file that vanished or is corrupt; the
    training loop counts, logs and (under ``data.strict``) stops on those.

    ``cache_bytes`` > 0 keeps decoded samples in memory up to that many bytes (per process; first
    come, first kept), so a small dataset is decoded once instead of once per epoch. The
    transform gets a copy of the sample dict and never writes into the cached arrays (it builds
    its own tensors from them).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        transform: Callable[[dict[str, Any], int], dict[str, Any]],
        cache_bytes: int = 0,
    ):
        self.sources = list(sources)
        self.transform = transform
        self.cache_bytes = int(cache_bytes)
        self.cached_bytes = 0
        self._decoded: dict[tuple[int, int], dict[str, Any]] = {}

    def __len__(self) -> int:
        return sum(len(s.records) for s in self.sources)

    def __getitem__(self, slot: Slot) -> dict[str, Any]:
        s, i, seed = slot
        record = self.sources[s].records[i]
        sample = self._decoded.get((s, i))
        if sample is None:
            try:
                sample = load_sample(record)
            except (OSError, ValueError, SyntaxError) as e:
                return {"skipped": record.unique_id, "error": f"{type(e).__name__}: {e}"}
            size = sample["image"].nbytes + sample["mask"].nbytes
            if self.cached_bytes + size <= self.cache_bytes:
                self._decoded[s, i] = sample
                self.cached_bytes += size
        sample = self.transform(dict(sample), seed)
        sample["synthetic"] = self.sources[s].synthetic
        sample["source"] = s
        return sample


def summarize_sources(sources: Sequence[Source], shares: Sequence[float]) -> dict[str, Any]:
    """What goes into ``run_info.json``: per-source sizes, shares, class counts, novel classes."""
    return {
        "sources": [
            {
                "name": s.name,
                "synthetic": s.synthetic,
                "num_samples": len(s.records),
                "share": float(w),
                "class_counts": dict(Counter(r.class_name for r in s.records)),
                "novel_classes": s.novel_classes,
            }
            for s, w in zip(sources, shares, strict=True)
        ],
        "outside_ov_protocol": any(s.novel_classes for s in sources),
    }
