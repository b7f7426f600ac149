from __future__ import annotations

import math

import numpy as np
import pytest
from generation_data import ellipse, textured, write_dataset
from omegaconf import OmegaConf

from generation.base import Placement, SkipSample, SourceObject, place_object
from generation.classic import ClassicGenerator, match_colour_statistics, quilt_texture
from generation.classic.quilting import _min_cut
from generation.classic.sample import build_classic
from ovcamo import CONF_DIR
from ovcamo.data import DataPaths, holdout_split, load_sample, resolve_records


def source(size: int = 96, mask: np.ndarray | None = None) -> SourceObject:
    rng = np.random.default_rng(0)
    img = textured(rng, size, size, np.array([60.0, 140.0, 90.0]))
    m = (
        ellipse(size, size, size * 0.5, size * 0.45, size * 0.2, size * 0.3)
        if mask is None
        else mask
    )
    img[m] = textured(rng, size, size, np.array([150.0, 90.0, 40.0]))[m]
    return SourceObject(img, m, "owl", "000001_owl")


def test_object_pixels_and_mask_are_exact_under_the_recorded_placement():
    src = source()
    out = ClassicGenerator().generate(src, "owl", seed=5)
    placement = Placement.from_json(out.extra["placement"])
    expected_pixels, expected_mask = place_object(src.image, src.mask, placement)
    assert out.image.shape == src.image.shape and out.image.dtype == np.uint8
    np.testing.assert_array_equal(out.mask, expected_mask)
    np.testing.assert_array_equal(out.image[out.mask], expected_pixels[out.mask])
    assert out.mask.sum() > 0


def test_deterministic_per_seed():
    src = source()
    g = ClassicGenerator()
    a, b, c = g.generate(src, "owl", 1), g.generate(src, "owl", 1), g.generate(src, "owl", 2)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_object_exemplar_gives_the_objects_colours_not_the_old_background():
    src = source()
    out = ClassicGenerator(exemplar="object").generate(src, "owl", 0)
    bg = out.image[~out.mask].reshape(-1, 3).mean(0)
    obj = src.image[src.mask].reshape(-1, 3).mean(0)
    old_bg = src.image[~src.mask].reshape(-1, 3).mean(0)
    assert np.abs(bg - obj).max() < 10
    assert np.abs(bg - old_bg).max() > 40


def test_quilting_uses_only_pixels_inside_the_mask():
    # Exemplar: red inside the mask, pure blue outside; no blue may reach the texture.
    ex = np.zeros((40, 40, 3), np.uint8)
    m = ellipse(40, 40, 20, 20, 15, 15)
    ex[m] = (200, 30, 30)
    ex[~m] = (0, 0, 255)
    tex, patch = quilt_texture(ex, m, 50, 70, np.random.default_rng(0), patch=12, min_coverage=0.8)
    assert tex.shape == (50, 70, 3) and patch == 12
    assert tex[..., 2].max() <= 40  # the background is 255 blue; the object has 30


def test_min_cut_follows_the_cheap_column():
    err = np.ones((6, 4))
    err[:, 2] = 0
    np.testing.assert_array_equal(_min_cut(err), [2] * 6)


def test_colour_match_moves_statistics_to_the_reference():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 80, (32, 32, 3)).astype(np.uint8)
    ref = rng.integers(120, 250, (32, 32, 3)).astype(np.uint8)
    m = np.ones((32, 32), bool)
    out = match_colour_statistics(img, ref, m)
    assert np.abs(out.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).max() < 6


def test_object_touching_the_border_stays_on_it():
    size = 80
    m = ellipse(size, size, 0, 40, 20, 20)
    out = ClassicGenerator().generate(source(size, m), "owl", 3)
    assert out.mask[0].any()
    p = Placement.from_json(out.extra["placement"])
    assert p.top == 0


def test_object_spanning_the_width_keeps_its_horizontal_extent():
    size = 64
    m = np.zeros((size, size), bool)
    m[20:40, :] = True
    out = ClassicGenerator().generate(source(size, m), "owl", 0)
    assert out.mask.any(0).all() and out.extra["placement"]["scale"] == 1.0


@pytest.mark.parametrize(
    "mask,reason",
    [
        (np.zeros((64, 64), bool), "empty_mask"),
        (np.ones((64, 64), bool), "object_fills_image"),
        (ellipse(64, 64, 32, 32, 2, 2), "tiny_object"),
    ],
)
def test_bad_sources_are_skipped_with_a_reason(mask, reason):
    with pytest.raises(SkipSample, match=reason):
        ClassicGenerator().generate(source(64, mask), "owl", 0)


def test_size_mismatch_is_skipped():
    src = source(64)
    bad = SourceObject(src.image[:60], src.mask, "owl", "x")
    with pytest.raises(SkipSample, match="size_mismatch"):
        ClassicGenerator().generate(bad, "owl", 0)


def test_thin_object_uses_a_smaller_patch():
    m = np.zeros((96, 96), bool)
    m[40:50, 10:90] = True
    out = ClassicGenerator(exemplar="object", patch=24).generate(source(96, m), "owl", 0)
    assert out.extra["patch"] < 24


def test_source_exemplar_gives_the_old_background_not_the_objects_colours():
    src = source()
    out = ClassicGenerator(exemplar="source").generate(src, "owl", 0)
    bg = out.image[~out.mask].reshape(-1, 3).mean(0)
    old_bg = src.image[~src.mask].reshape(-1, 3).mean(0)
    obj = src.image[src.mask].reshape(-1, 3).mean(0)
    assert np.abs(bg - old_bg).max() < 10 and np.abs(bg - obj).max() > 40
    assert out.extra["exemplar"] == src.unique_id


def test_class_exemplars_come_from_the_training_part_of_their_class(tmp_path):
    paths = DataPaths.from_paths_json(write_dataset(tmp_path / "ds", size=96))
    node = OmegaConf.merge(
        OmegaConf.load(CONF_DIR / "generator" / "classic.yaml"),
        {"holdout_fraction": 0.5, "holdout_seed": 0},
    )
    gen = build_classic(node, data=paths)
    records, _ = resolve_records(paths, "train", check_files="none")
    kept, held = holdout_split(records, 0.5, 0)
    assert {r.unique_id for rs in gen.pool.values() for r in rs} == {r.unique_id for r in kept}
    leopards = [r for r in kept if r.class_name == "snow leopard"]
    src = load_sample(leopards[0])
    source_object = SourceObject(src["image"], src["mask"], "snow leopard", leopards[0].unique_id)
    used = set()
    for seed in range(12):
        out = gen.generate(source_object, "snow leopard", seed)
        used.add(out.extra["exemplar"])
        exemplar = load_sample(next(r for r in kept if r.unique_id == out.extra["exemplar"]))
        bg = out.image[~out.mask].reshape(-1, 3).mean(0)
        assert np.abs(bg - exemplar["image"][~exemplar["mask"]].reshape(-1, 3).mean(0)).max() < 12
    assert used == {r.unique_id for r in leopards}
    assert not used & {r.unique_id for r in held}
    # a class without training images falls back to the source's own background
    assert gen.generate(source_object, "crab", 0).extra["exemplar"] == leopards[0].unique_id
    # so does a node loaded without a data config (the split is unknown: no pool at all)
    alone = build_classic(OmegaConf.load(CONF_DIR / "generator" / "classic.yaml"), data=paths)
    assert alone.pool == {}
    assert (
        alone.generate(source_object, "snow leopard", 0).extra["exemplar"] == leopards[0].unique_id
    )


def test_unknown_exemplar_is_refused():
    with pytest.raises(ValueError, match="generator.exemplar"):
        ClassicGenerator(exemplar="sky")


def test_work_on_a_384_image_is_one_vectorised_step_per_block(monkeypatch):
    """Speed without a clock (timings belong to benchmarks/generation.py): a 384² canvas is
    quilted in one vectorised step per patch block, each with at most two seam cuts along the
    overlap strip, the only per-pixel Python work."""
    from generation.classic import quilting

    cuts: list[tuple[int, int]] = []

    def counted(error: np.ndarray) -> np.ndarray:
        cuts.append(error.shape)
        return _min_cut(error)

    monkeypatch.setattr(quilting, "_min_cut", counted)
    out = ClassicGenerator().generate(source(384), "owl", 1)
    patch = out.extra["patch"]
    overlap = max(2, patch // 4)
    blocks_per_side = math.ceil((384 - overlap) / (patch - overlap))
    # Every block but the first gets one cut per neighbour already placed (left, top).
    assert len(cuts) == 2 * blocks_per_side * (blocks_per_side - 1)
    assert set(cuts) == {(patch, overlap)}
