"""The micro-world renderer: determinism, OVCamo-format round trip, long tail, exact masks, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from ovcamo import CONF_DIR
from ovcamo.data import OVCamoDataset, holdout_split, load_class_info
from ovcamo.data.io import read_image, read_mask
from ovcamo.data.ovcamo_format import DataPaths, resolve_records
from ovcamo.data.world import (
    PACKAGED_CLASS_LIST,
    WEB_CAMOUFLAGED,
    WorldConfigError,
    _render_all,
    ensure_world,
    long_tail_counts,
    render_extra_set,
    render_grid,
    render_world,
    resolve_world,
)
from ovcamo.data.world_render import (
    PATTERN_FAMILIES,
    SHAPE_FAMILIES,
    class_style,
    framed,
    object_box,
    render_camouflaged,
    render_salient,
)


def micro_cfg(**overrides) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "world" / "micro.yaml"))
    cfg.update(overrides)
    return cfg


def tiny_cfg(**overrides) -> dict:
    """A 32 px world with 2 base and 3 novel classes and a handful of samples."""
    base = {
        "name": "tiny",
        "image_size": 32,
        "classes": {"train": ["mantis", "flatfish"], "test": ["cat", "crab", "moth"]},
        "train_counts": {"min": 2, "max": 6},
        "test_count": 2,
        "salient_per_class": 2,
        "salient_heldout_per_class": 1,
        "camouflaged_web_per_class": 1,
    }
    return micro_cfg(**{**base, **overrides})


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_world(tiny_cfg(), cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


#: SHA-256 of ``class_info.json`` in OVCamo's release archive (``ovcamo.zip``, dataset-v1.0).
OVCAMO_CLASS_INFO_SHA256 = "d4ed746b91a97d78abb015267c6c2626ae6750bf90ea586f393900361ea8cfa6"


def test_packaged_class_list_is_ovcamo() -> None:
    assert hashlib.sha256(PACKAGED_CLASS_LIST.read_bytes()).hexdigest() == OVCAMO_CLASS_INFO_SHA256


def test_same_seed_gives_byte_identical_files(tiny_world: Path, tmp_path: Path) -> None:
    again = ensure_world(tiny_cfg(), cache_dir=tmp_path, progress=False)
    assert again != tiny_world
    assert tree_digest(again) == tree_digest(tiny_world)
    other_seed = ensure_world(tiny_cfg(seed=1), cache_dir=tmp_path, progress=False)
    assert tree_digest(other_seed) != tree_digest(tiny_world)


def test_second_call_returns_the_cached_folder(tiny_world: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_world.rglob("*")}
    assert ensure_world(tiny_cfg(), cache_dir=tiny_world.parents[1], progress=False) == tiny_world
    assert {p: p.stat().st_mtime_ns for p in tiny_world.rglob("*")} == before
    assert not [p for p in tiny_world.parent.iterdir() if p.name.endswith(".tmp")]


def test_round_trip_through_the_loader(tiny_world: Path, real_class_info: Path) -> None:
    paths = DataPaths.from_paths_json(tiny_world / "paths.json")
    real = {c.name: c for c in load_class_info(real_class_info)}
    classes = load_class_info(paths.class_info)
    for c in classes:
        assert (c.id, c.split, c.super_class, c.sub_class) == (
            real[c.name].id,
            real[c.name].split,
            real[c.name].super_class,
            real[c.name].sub_class,
        )
    for split, n in (("train", 8), ("test", 6)):
        ds = OVCamoDataset(paths, split, strict=True, check_files="full")
        assert ds.report.n_errors == 0
        assert len(ds) == n
        assert ds.report.counts["mask_values_0255"] == n
        sample = ds[0]
        assert sample["image"].shape == (32, 32, 3) and sample["mask"].shape == (32, 32)
        assert sample["mask"].any()
    counts = {c.name: c.num_samples for c in classes}
    assert counts == {"mantis": 2, "flatfish": 6, "cat": 2, "crab": 2, "moth": 2}


def test_splits_disjoint_and_classes_in_their_split(tiny_world: Path) -> None:
    paths = DataPaths.from_paths_json(tiny_world / "paths.json")
    train, _ = resolve_records(paths, "train")
    test, _ = resolve_records(paths, "test")
    assert not {r.unique_id for r in train} & {r.unique_id for r in test}
    assert {r.class_name for r in train} == {"mantis", "flatfish"}
    assert {r.class_name for r in test} == {"cat", "crab", "moth"}
    assert not {p.name for p in paths.train_image_dir.iterdir()} & {
        p.name for p in paths.test_image_dir.iterdir()
    }


def test_camouflaged_web_set_frames_base_objects(tiny_world: Path) -> None:
    entries = json.loads((tiny_world / WEB_CAMOUFLAGED / "captions.json").read_text())
    assert sorted(e["class_name"] for e in entries) == ["flatfish", "mantis"]
    for e in entries:
        assert "camouflaged" in e["caption"] and e["class_name"] in e["caption"]
        assert e["split"] == "train"
        image = read_image(tiny_world / WEB_CAMOUFLAGED / e["image"])
        mask = read_mask(tiny_world / WEB_CAMOUFLAGED / e["mask"])
        assert image.shape == (32, 32, 3)
        # Framed on the object: it fills far more of the picture than in a scene of the split.
        assert mask.mean() > 0.08


def test_framed_scene_keeps_the_mask_exact_and_centres_the_object() -> None:
    style = class_style("seahorse", 9, 0)
    scene = render_camouflaged(style, 64, 0.3, np.random.default_rng(3))
    y0, y1, x0, x1 = object_box(scene.mask, 0.25)
    ys, xs = np.nonzero(scene.mask)
    assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1
    out = framed(scene, 48)
    assert out.image.shape == (48, 48, 3) and out.mask.shape == (48, 48)
    np.testing.assert_array_equal(out.image[out.mask], out.object_layer[out.mask])
    np.testing.assert_array_equal(out.image[~out.mask], out.background_layer[~out.mask])
    assert out.mask.mean() > 2 * scene.mask.mean()
    assert object_box(np.zeros((8, 8), bool)) is None


def test_salient_set_covers_every_class_with_captions(tiny_world: Path) -> None:
    entries = json.loads((tiny_world / "salient" / "captions.json").read_text())
    assert len(entries) == 5 * 3
    for e in entries:
        assert e["class_name"] in e["caption"]
        assert e["split"] in ("train", "val")
        assert read_image(tiny_world / "salient" / e["image"]).shape == (32, 32, 3)
        assert read_mask(tiny_world / "salient" / e["mask"]).any()
    per_class = {
        n: [e["split"] for e in entries if e["class_name"] == n]
        for n in ("mantis", "flatfish", "cat", "crab", "moth")
    }
    assert all(sorted(s) == ["train", "train", "val"] for s in per_class.values())


def test_default_world_long_tail_and_base_validation() -> None:
    spec = resolve_world(micro_cfg())
    train = spec.train_classes
    assert len(train) == 6 and len(spec.test_classes) == 10
    counts = sorted(c.num_samples for c in train)
    assert counts[-1] / counts[0] == pytest.approx(6.0)
    assert counts == sorted(set(counts))
    # The rarest real OVCamo class (mantis, 186) is the rarest here too.
    assert min(train, key=lambda c: c.num_samples).name == "mantis"
    # data.holdout_fraction=0.2 leaves at least 4 base-validation samples of every base class.
    for c in train:
        assert round(0.2 * c.num_samples) >= 4
    assert all(c.num_samples == 12 for c in spec.test_classes)


def test_holdout_of_rendered_train_split(tiny_world: Path) -> None:
    paths = DataPaths.from_paths_json(tiny_world / "paths.json")
    train, _ = resolve_records(paths, "train")
    kept, held = holdout_split(train, 0.2)
    assert {r.class_name for r in held} == {"mantis", "flatfish"}
    assert not {r.unique_id for r in kept} & {r.unique_id for r in held}


def test_full_world_uses_all_75_classes(real_class_info: Path) -> None:
    full = OmegaConf.load(CONF_DIR / "world" / "full.yaml")
    cfg = micro_cfg(**{k: v for k, v in OmegaConf.to_container(full).items() if k != "defaults"})
    spec = resolve_world(cfg)
    assert len(spec.classes) == 75
    assert len(spec.train_classes) == 14 and len(spec.test_classes) == 61
    assert [c.name for c in spec.classes] == [c.name for c in load_class_info(real_class_info)]


def test_long_tail_counts() -> None:
    assert long_tail_counts(6, 20, 120) == [20, 29, 41, 59, 84, 120]
    assert long_tail_counts(1, 5, 9) == [9]


@pytest.mark.parametrize("style_id", range(8))
def test_masks_are_exactly_the_object_pixels(style_id: int) -> None:
    style = class_style("probe", style_id, seed=3)
    for difficulty in (0.0, 0.5, 1.0):
        scene = render_camouflaged(style, 48, difficulty, np.random.default_rng(style_id))
        m = scene.mask
        assert m.any() and not m.all()
        assert np.array_equal(scene.image[m], scene.object_layer[m])
        assert np.array_equal(scene.image[~m], scene.background_layer[~m])
    scene = render_salient(style, 48, np.random.default_rng(0))
    assert np.array_equal(scene.image[scene.mask], scene.object_layer[scene.mask])


def test_written_mask_matches_rendered_object(tiny_world: Path) -> None:
    from ovcamo.data.world import _scene_rng

    spec = resolve_world(tiny_cfg())
    mantis = next(c for c in spec.classes if c.name == "mantis")
    scene = render_camouflaged(
        spec.style(mantis), 32, spec.difficulty, _scene_rng(spec, "train", mantis, 0)
    )
    samples = json.loads((tiny_world / "sample_info.json").read_text())
    first = next(s for s in samples if s["base_class"] == "mantis")
    mask = read_mask(tiny_world / "train" / "mask" / first["mask"])
    image = read_image(tiny_world / "train" / "image" / first["image"])
    assert np.array_equal(mask, scene.mask)
    assert np.array_equal(image, scene.image)


def test_classes_look_distinct() -> None:
    styles = [class_style(c.name, c.id, 0) for c in load_class_info(PACKAGED_CLASS_LIST)]
    assert {s.shape for s in styles} == set(SHAPE_FAMILIES)
    assert {s.pattern for s in styles} == set(PATTERN_FAMILIES)
    spec = resolve_world(micro_cfg())
    pairs = [(spec.style(c).shape, spec.style(c).pattern) for c in spec.classes]
    assert len(set(pairs)) == len(pairs)


def test_difficulty_makes_the_object_harder_to_see() -> None:
    def contrast(d: float) -> float:
        gaps = []
        for i in range(8):
            scene = render_camouflaged(class_style("probe", i, 0), 64, d, np.random.default_rng(i))
            img = scene.image.astype(float)
            gaps.append(np.abs(img[scene.mask].mean(0) - img[~scene.mask].mean(0)).sum())
        return float(np.mean(gaps))

    assert contrast(0.0) > contrast(1.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"classes": {"train": ["mantis", "unicorn"], "test": ["cat"]}}, "unknown class"),
        ({"classes": {"train": ["mantis"], "test": ["owl"]}}, "other split"),
        ({"classes": {"train": [], "test": ["cat"]}}, "train split is empty"),
        ({"classes": {"train": ["mantis", "mantis"], "test": ["cat"]}}, "more than once"),
        ({"classes": "some"}, "world.classes"),
        ({"test_count": 0}, "world.test_count"),
        ({"salient_per_class": -3}, "world.salient_per_class"),
        ({"camouflaged_web_per_class": -1}, "world.camouflaged_web_per_class"),
        ({"train_counts": {"min": 0, "max": 5}}, "train_counts.min"),
        ({"train_counts": {"min": 9, "max": 5}}, "exceeds"),
        ({"difficulty": 1.5}, "world.difficulty"),
        ({"image_size": 8}, "world.image_size"),
    ],
)
def test_bad_config_is_a_clear_error_before_writing(
    override: dict, message: str, tmp_path: Path
) -> None:
    with pytest.raises(WorldConfigError, match=message):
        ensure_world(tiny_cfg(**override), cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_missing_key_is_named(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    del cfg["difficulty"]
    with pytest.raises(WorldConfigError, match="world.difficulty"):
        ensure_world(cfg, cache_dir=tmp_path)


def test_interrupted_render_leaves_no_cache_entry(tmp_path: Path, monkeypatch) -> None:
    import ovcamo.data.world as world

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(world, "render_salient", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_world(tiny_cfg(), cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "world").iterdir()) == []


def test_main_exports_and_draws_grid(tiny_world: Path, tmp_path: Path) -> None:
    from ovcamo.data.world import main

    cfg = {
        "world": tiny_cfg(),
        "cache_dir": str(tiny_world.parents[1]),
        "out_dir": str(tmp_path / "micro"),
        "link": False,
        "grid": str(tmp_path / "g.png"),
    }
    out = main(cfg)
    assert out == tmp_path / "micro"
    assert tree_digest(out) == tree_digest(tiny_world)
    assert main(cfg) == out  # same world already there: accepted
    paths = DataPaths.from_paths_json(out / "paths.json")
    assert paths.train_image_dir == out / "train" / "image"
    assert (tmp_path / "g.png").stat().st_size > 1000
    with pytest.raises(FileExistsError, match="does not hold this world"):
        main({**cfg, "world": tiny_cfg(seed=5)})
    linked = main({**cfg, "out_dir": str(tmp_path / "link"), "link": True, "grid": None})
    assert linked.is_symlink() and linked.resolve() == tiny_world.resolve()


def test_render_grid_writes_png(tiny_world: Path, tmp_path: Path) -> None:
    path = render_grid(tiny_world, tmp_path / "grid.png", n_classes=3)
    assert read_image(path).shape[2] == 3


def test_workers_render_the_same_pixels(tmp_path: Path) -> None:
    spec = resolve_world(tiny_cfg())
    render_world(spec, tmp_path / "serial", progress=False)
    jobs = [("train", spec.train_classes[0], i, tmp_path / "pool", f"{i}") for i in range(40)]
    _render_all(spec, jobs, progress=False, desc="", workers=2)
    serial = resolve_records(DataPaths.from_paths_json(tmp_path / "serial" / "paths.json"), "train")
    first = [r for r in serial[0] if r.class_name == spec.train_classes[0].name]
    for i, r in enumerate(first):
        assert (tmp_path / "pool" / "image" / f"{i}.png").read_bytes() == r.image_path.read_bytes()


def test_extra_sets_are_new_samples_of_base_classes(tiny_world: Path, tmp_path: Path) -> None:
    spec = resolve_world(tiny_cfg())
    extra = render_extra_set(spec, {"mantis": 3, "flatfish": 1}, tmp_path / "x", namespace="extra")
    paths = DataPaths.from_paths_json(extra / "paths.json")
    records, _ = resolve_records(paths, "train")
    assert sorted(r.class_name for r in records) == ["flatfish", "mantis", "mantis", "mantis"]
    own = {p.read_bytes() for p in (tiny_world / "train" / "image").iterdir()}
    assert not own & {r.image_path.read_bytes() for r in records}
    # As an evaluation set: the base classes become its test classes, novel classes are absent.
    rare = render_extra_set(
        spec, {"mantis": 2}, tmp_path / "r", namespace="rare-eval", split="test"
    )
    classes = load_class_info(rare / "class_info.json")
    assert {(c.name, c.split) for c in classes} == {("mantis", "test"), ("flatfish", "test")}
    test, _ = resolve_records(DataPaths.from_paths_json(rare / "paths.json"), "test")
    assert [r.class_name for r in test] == ["mantis", "mantis"]
    with pytest.raises(ValueError, match="not base"):
        render_extra_set(spec, {"cat": 1}, tmp_path / "n", namespace="extra")


def test_camouflage_cues_are_shape_not_colour() -> None:
    """The object is in its background's palette; what shows it is a darker rim and a shadow."""
    style = class_style("probe", 3, 0)
    scene = render_camouflaged(style, 96, 0.3, np.random.default_rng(0))
    obj = scene.object_layer.astype(float).mean(-1)
    from scipy.ndimage import binary_dilation, binary_erosion

    rim = scene.mask & ~binary_erosion(scene.mask, iterations=2)
    core = binary_erosion(scene.mask, iterations=6)
    assert obj[rim].mean() < obj[core].mean()
    bg = scene.background_layer.astype(float).mean(-1)
    ring = binary_dilation(scene.mask, iterations=4) & ~scene.mask
    shifted = np.roll(np.roll(ring, 4, axis=0), 4, axis=1) & ~scene.mask
    # The shadow falls to the bottom right: that side of the outline is darker than the other.
    opposite = np.roll(np.roll(ring, -4, axis=0), -4, axis=1) & ~scene.mask
    assert bg[shifted].mean() < bg[opposite].mean()


def test_novel_classes_reach_training_only_as_captioned_web_photos(tiny_world: Path) -> None:
    """The open-vocabulary protocol of the micro-world: the micro CLIP trains on the captioned
    web set (salient renders of every class, camouflaged ones of base classes), the segmenter on
    the train split and on sets mixed into it; no camouflaged scene or mask of a novel class is in
    any of them."""
    from ovcamo.data.mixing import load_sources
    from ovcamo.engine.micro_clip import load_salient

    paths = DataPaths.from_paths_json(tiny_world / "paths.json")
    novel = {c.name for c in load_class_info(paths.class_info) if c.split == "test"}
    _, captions, names = load_salient(tiny_world, "train")
    assert novel <= set(names)  # the web set names every class ...
    for caption, name in zip(captions, names, strict=True):
        assert name in caption
    salient = {
        e["image"] for e in json.loads((tiny_world / "salient" / "captions.json").read_text())
    }
    assert all(s.startswith("image/") for s in salient)  # ... as plain renders in salient/ only
    web = json.loads((tiny_world / WEB_CAMOUFLAGED / "captions.json").read_text())
    base = {c.name for c in load_class_info(paths.class_info) if c.split == "train"}
    assert {e["class_name"] for e in web} == base and not {e["class_name"] for e in web} & novel
    assert len(names) == len(salient) - 5 + len(web)  # every train entry of both folders
    spec = resolve_world(tiny_cfg())
    extra = render_extra_set(spec, {"mantis": 2}, tiny_world.parent / "extra", namespace="extra")
    sources = load_sources({"holdout_fraction": 0.2, "synthetic": [str(extra)]}, paths)
    trained = [r for s in sources for r in s.records]
    assert trained and not {r.class_name for r in trained} & novel
    assert all("salient" not in r.image_path.parts for r in trained)
