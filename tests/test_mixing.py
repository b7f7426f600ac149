"""Synthetic mixing: batch shares, determinism, DDP sharding, resume position, protocol guard."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from _engine_data import TEST_CLASSES, TRAIN_CLASSES, write_tiny_dataset

from ovcamo.data import DataPaths
from ovcamo.data.mixing import (
    MixedBatchSampler,
    MixedDataset,
    SyntheticSetError,
    load_sources,
    source_shares,
    summarize_sources,
)
from ovcamo.data.transforms import TrainTransform


@pytest.fixture
def real(tmp_path):
    return DataPaths.from_paths_json(write_tiny_dataset(tmp_path / "real") / "paths.json")


def _synth(tmp_path, name="syn", counts=None):
    counts = counts or {"snow leopard": 4, "owl": 2}
    return write_tiny_dataset(tmp_path / name, counts, seed=1, synthetic=True)


def _cfg(**kw):
    base = {"holdout_fraction": 0.0, "synthetic": [], "synthetic_ratio": 0.0}
    return base | kw


def test_every_batch_has_its_synthetic_share():
    s = MixedBatchSampler([100, 40], [0.75, 0.25], batch_size=4, seed=0)
    batches = s.epoch_batches(0)
    assert len(batches) == len(s) == 34  # ceil(100 / 3)
    assert all(len(b) == 4 for b in batches)
    assert all(sum(src == 1 for src, _, _ in b) == 1 for b in batches)
    real_seen = Counter(i for b in batches for src, i, _ in b if src == 0)
    assert set(real_seen) == set(range(100))  # every real sample at least once per epoch


def test_fractional_shares_hold_over_the_epoch():
    s = MixedBatchSampler([300, 50, 50], [0.8, 0.15, 0.05], batch_size=4, seed=2)
    counts = s._slot_counts(s.num_global_batches)
    assert (counts.sum(1) == 4).all() and (counts >= 0).all()
    targets = np.arange(1, len(counts) + 1)[:, None] * 4 * np.array([0.8, 0.15, 0.05])
    assert np.abs(counts.cumsum(0) - targets).max() <= 1.0


def test_deterministic_per_seed_and_epoch():
    a = MixedBatchSampler([20, 10], [0.5, 0.5], 4, seed=5)
    b = MixedBatchSampler([20, 10], [0.5, 0.5], 4, seed=5)
    assert a.epoch_batches(3) == b.epoch_batches(3)
    assert a.epoch_batches(3) != a.epoch_batches(4)
    assert a.epoch_batches(3) != MixedBatchSampler([20, 10], [0.5, 0.5], 4, seed=6).epoch_batches(3)


def test_resume_start_skips_exactly_the_done_batches():
    s = MixedBatchSampler([21], [1.0], 4, seed=0)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start=3)
    assert list(s) == full[3:]


def test_ranks_split_every_global_batch():
    """batch_size is the global batch: each step, the ranks together see exactly the samples one
    process sees, and every rank gets the same number of equal-sized batches."""
    whole = MixedBatchSampler([22, 9], [0.75, 0.25], 4, seed=0)
    whole.set_epoch(1)
    single = list(whole)
    ranks = [
        MixedBatchSampler([22, 9], [0.75, 0.25], 4, seed=0, rank=r, world_size=2) for r in (0, 1)
    ]
    for r in ranks:
        r.set_epoch(1, start=2)
    got = [list(r) for r in ranks]
    assert len(got[0]) == len(got[1]) == len(single) - 2 == len(ranks[0]) - 2
    assert all(len(b) == 2 for g in got for b in g)
    for step, batch in enumerate(single[2:]):
        assert sorted(got[0][step] + got[1][step]) == sorted(batch)
    with pytest.raises(ValueError, match="global batch.*multiple of the 3 processes"):
        MixedBatchSampler([22], [1.0], 4, seed=0, rank=0, world_size=3)


def test_shares_from_ratio_weights_and_pool(tmp_path, real):
    a, b = _synth(tmp_path, "a"), _synth(tmp_path, "b", {"owl": 2})
    sources = load_sources(_cfg(synthetic=[str(a), str(b)]), real)
    assert [len(s.records) for s in sources] == [18, 6, 2]
    assert source_shares(_cfg(synthetic_ratio=0.4), sources) == pytest.approx([0.6, 0.3, 0.1])
    assert source_shares(_cfg(synthetic_weights=[0.1, 0.2]), sources) == pytest.approx(
        [0.7, 0.1, 0.2]
    )
    assert source_shares(_cfg(), sources) == pytest.approx([18 / 26, 6 / 26, 2 / 26])
    with pytest.raises(SyntheticSetError, match="not both"):
        source_shares(_cfg(synthetic_ratio=0.2, synthetic_weights=[0.1, 0.1]), sources)
    with pytest.raises(SyntheticSetError, match="2 synthetic sets"):
        source_shares(_cfg(synthetic_weights=[0.1]), sources)
    with pytest.raises(SyntheticSetError, match="less than 1"):
        source_shares(_cfg(synthetic_ratio=1.0), sources)


def test_holdout_part_is_not_trained_on(real):
    sources = load_sources(_cfg(holdout_fraction=0.34), real)
    assert len(sources[0].records) == 18 - 3 * 2


def test_novel_class_synthetic_refused_then_flagged(tmp_path, real):
    novel = _synth(tmp_path, "novel", {"frog": 2, "owl": 1})
    with pytest.raises(SyntheticSetError, match=r"novel \(test\) classes \['frog'\].*allow_novel"):
        load_sources(_cfg(synthetic=[str(novel)]), real)
    sources = load_sources(_cfg(synthetic=[str(novel)], allow_novel_synthetic=True), real)
    summary = summarize_sources(sources, source_shares(_cfg(), sources))
    assert summary["outside_ov_protocol"] is True
    assert summary["sources"][1]["novel_classes"] == ["frog"]
    base_only = load_sources(_cfg(synthetic=[str(_synth(tmp_path))]), real)
    assert summarize_sources(base_only, [0.5, 0.5])["outside_ov_protocol"] is False


def test_unknown_class_and_missing_paths_json(tmp_path, real):
    odd = write_tiny_dataset(
        tmp_path / "odd", {"dragon": 1}, classes_from=(("dragon",), ()), synthetic=True
    )
    with pytest.raises(SyntheticSetError, match="dragon"):
        load_sources(_cfg(synthetic=[str(odd)]), real)
    with pytest.raises(SyntheticSetError, match="paths.json is missing"):
        load_sources(_cfg(synthetic=[str(tmp_path / "nowhere")]), real)


def test_dataset_reads_slots_and_marks_unreadable(tmp_path, real):
    syn = _synth(tmp_path)
    sources = load_sources(_cfg(synthetic=[str(syn)]), real)
    ds = MixedDataset(sources, TrainTransform(image_size=16))
    item = ds[(1, 0, 123)]
    assert item["synthetic"] is True and item["image"].shape == (3, 16, 16)
    assert item["class_name"] in TRAIN_CLASSES and item["class_name"] not in TEST_CLASSES
    again = ds[(1, 0, 123)]
    assert (item["image"] == again["image"]).all()
    sources[0].records[2].image_path.write_bytes(b"not a png")
    bad = ds[(0, 2, 1)]
    assert bad["skipped"] == sources[0].records[2].unique_id and "Error" in bad["error"]


def test_decoded_samples_are_cached_within_the_byte_budget(tmp_path, real):
    sources = load_sources(_cfg(), real)
    transform = TrainTransform(image_size=16, color_jitter_p=1.0)
    plain, cached = MixedDataset(sources, transform), MixedDataset(sources, transform, 10**9)
    tight = MixedDataset(sources, transform, 1)  # less than any sample
    slots = [(0, i, 7 + i) for i in range(3)]
    first = [cached[s] for s in slots]
    for s, item in zip(slots, first, strict=True):
        assert torch.equal(item["image"], plain[s]["image"]) and "skipped" not in tight[s]
    assert len(cached._decoded) == 3 and cached.cached_bytes > 0 and tight.cached_bytes == 0
    # Decoded once: with the files gone the cache serves the same tensors, twice (the transform
    # did not write into the cached arrays); without a cache the files are read and missed.
    for s in slots:
        sources[0].records[s[1]].image_path.unlink()
    for _ in range(2):
        for s, before in zip(slots, first, strict=True):
            item = cached[s]
            assert torch.equal(item["image"], before["image"])
            assert torch.equal(item["mask"], before["mask"])
    assert "skipped" in plain[slots[0]] and "skipped" in tight[slots[0]]
