"""The OVCamo data format: class/sample lists, one validation pass with counts, image/mask reading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovcamo.data import (
    ClassInfo,
    DataPaths,
    DatasetFormatError,
    DatasetValidationError,
    OVCamoDataset,
    SampleInfo,
    class_names,
    holdout_split,
    load_class_info,
    load_sample,
    load_sample_info,
    resolve_records,
    write_class_info,
    write_sample_info,
)
from ovcamo.data.io import (
    PathEscapeError,
    atomic_write_json,
    atomic_write_text,
    read_image,
    read_mask,
    safe_join,
)


def test_real_class_list_is_read_byte_exact(real_class_info: Path) -> None:
    classes = load_class_info(real_class_info)
    raw = json.loads(real_class_info.read_text(encoding="utf-8"))
    assert [c.name for c in classes] == [e["name"] for e in raw]
    names = {c.name for c in classes}
    assert {"snow leopard", "reccoon", "non-succulent plant", "owlfly larva"} <= names
    assert "raccoon" not in names
    assert len(classes) == 75
    train = [c for c in classes if c.split == "train"]
    test = [c for c in classes if c.split == "test"]
    assert (len(train), len(test)) == (14, 61)
    assert sum(c.num_samples for c in train) == 7713
    assert sum(c.num_samples for c in test) == 3770
    assert class_names(classes, "test") == [
        c.name for c in sorted(classes, key=lambda c: c.id) if c.split == "test"
    ]
    mantis = next(c for c in classes if c.name == "mantis")
    assert mantis.sub_class == ("orchid mantis", "mantis")


def test_class_info_round_trip_keeps_names(real_class_info: Path, tmp_path: Path) -> None:
    classes = load_class_info(real_class_info)
    write_class_info(tmp_path / "c.json", classes)
    assert load_class_info(tmp_path / "c.json") == classes
    assert "snow leopard" in (tmp_path / "c.json").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "expected a JSON list"),
        ('[{"name": "a", "id": 1}]', "lacks key"),
        ('[{"name": "a", "id": 1, "split": "val"}]', "split 'val'"),
        (
            '[{"name": "a", "id": 1, "split": "test"}, {"name": "a", "id": 2, "split": "test"}]',
            "twice",
        ),
    ],
)
def test_bad_class_info(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "class_info.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=pattern):
        load_class_info(path)
    with pytest.raises(FileNotFoundError, match="class_info not found"):
        load_class_info(tmp_path / "absent.json")


def test_sample_info_keeps_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    entry = {
        "unique_id": "000006_snow leopard",
        "base_class": "snow leopard",
        "image": "x.jpg",
        "mask": "x.png",
        "id": 6,
        "synthetic": True,
        "generator": "classic",
        "seed": 3,
    }
    path.write_text(json.dumps([entry]), encoding="utf-8")
    (s,) = load_sample_info(path)
    assert s.image_name == "000006_snow leopard.jpg" and s.mask_name == "000006_snow leopard.png"
    assert s.synthetic and s.extra["generator"] == "classic"
    write_sample_info(tmp_path / "t.json", [s])
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8")) == [entry]
    path.write_text(json.dumps([{"unique_id": "a", "base_class": "b"}]), encoding="utf-8")
    with pytest.raises(
        DatasetFormatError,
        match=r"entry 0 \(unique_id 'a'\) lacks key\(s\) \['image', 'mask', 'id'\]",
    ):
        load_sample_info(path)


# --- a small dataset with every kind of problem -------------------------------------------------

CLASSES = [
    ClassInfo("snow leopard", 0, "mammal", ("snow leopard",), "train", 4),
    ClassInfo("reccoon", 1, "mammal", ("reccoon",), "train", 2),
    ClassInfo("owl", 2, "bird", ("owl",), "train", 0),
    ClassInfo("moth", 3, "insect", ("moth",), "test", 1),
]


def _paths(root: Path) -> DataPaths:
    return DataPaths(
        root / "class_info.json",
        root / "sample_info.json",
        root / "train" / "image",
        root / "train" / "mask",
        root / "test" / "image",
        root / "test" / "mask",
    )


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def _mask(h: int = 12, w: int = 16) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[3:9, 4:12] = 1
    return m


@pytest.fixture
def messy(tmp_path: Path) -> DataPaths:
    """A train split where each sample shows one problem; counts are pinned by the tests."""
    rng = np.random.default_rng(0)
    paths = _paths(tmp_path / "ds")
    img = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    tr_i, tr_m = paths.train_image_dir, paths.train_mask_dir
    samples = []

    def add(uid: str, cls: str, ext: str = ".jpg") -> None:
        samples.append(SampleInfo(uid, cls, f"orig{ext}", "orig.png", len(samples)))

    add("000001_snow leopard", "snow leopard", ".png")  # clean, mask 0/255
    _save(tr_i / "000001_snow leopard.png", img)
    _save(tr_m / "000001_snow leopard.png", _mask() * 255)
    add("000002_snow leopard", "snow leopard", ".png")  # grayscale image, mask 0/1
    _save(tr_i / "000002_snow leopard.png", img[..., 0])
    _save(tr_m / "000002_snow leopard.png", _mask())
    add("000003_snow leopard", "snow leopard", ".png")  # RGBA image, soft mask
    _save(tr_i / "000003_snow leopard.png", np.dstack([img, np.full((12, 16), 200, np.uint8)]))
    _save(tr_m / "000003_snow leopard.png", (_mask() * (np.arange(16) * 10 + 30)).astype(np.uint8))
    add("000004_snow leopard", "snow leopard", ".png")  # 16-bit image, size mismatch
    _save(tr_i / "000004_snow leopard.png", (img[:6, :8, 0].astype(np.uint16) * 257))
    _save(tr_m / "000004_snow leopard.png", _mask() * 255)
    add("000005_reccoon", "reccoon", ".png")  # missing image
    _save(tr_m / "000005_reccoon.png", _mask() * 255)
    add("000006_reccoon", "reccoon", ".png")  # missing mask
    _save(tr_i / "000006_reccoon.png", img)
    add("000007_reccoon", "reccoon", ".png")  # truncated image
    _save(tr_i / "000007_reccoon.png", img)
    data = (tr_i / "000007_reccoon.png").read_bytes()
    (tr_i / "000007_reccoon.png").write_bytes(data[: len(data) // 2])
    _save(tr_m / "000007_reccoon.png", _mask() * 255)
    add("000008_reccoon", "reccoon", ".png")  # unreadable mask (not an image at all)
    _save(tr_i / "000008_reccoon.png", img)
    (tr_m / "000008_reccoon.png").write_bytes(b"this is not a png")
    add("000009_tiger", "tiger")  # class missing from class_info
    add("../../escape", "snow leopard")  # unique_id escaping the root
    add("000001_snow leopard", "snow leopard", ".png")  # duplicate unique_id
    add("000010_moth", "moth", ".png")  # a test sample: not part of the train split
    _save(paths.test_image_dir / "000010_moth.png", img)
    _save(paths.test_mask_dir / "000010_moth.png", _mask() * 255)
    write_class_info(paths.class_info, CLASSES)
    write_sample_info(paths.sample_info, samples)
    return paths


def test_validation_reports_every_problem_with_counts(messy: DataPaths) -> None:
    records, report = resolve_records(messy, "train", check_files="full")
    assert report.n_checked == 11  # ten train entries + the unknown-class one
    assert dict(report.counts) == {
        "path_escape": 1,
        "duplicate_unique_id": 1,
        "unknown_class": 1,
        "missing_image": 1,
        "missing_mask": 1,
        "unreadable_image": 1,
        "unreadable_mask": 1,
        "size_mismatch_resized": 1,
        "image_converted_grayscale": 1,
        "image_converted_rgba": 1,
        "image_converted_16bit": 1,
        "mask_values_01": 1,
        "mask_values_0255": 2,
        "mask_values_soft": 1,
        "class_without_samples": 2,  # owl has none, every reccoon sample is faulty
    }
    assert report.n_errors == 7
    assert [r.unique_id for r in records] == [f"00000{i}_snow leopard" for i in range(1, 5)]
    assert report.n_kept == 4
    assert report.examples["unknown_class"] == ["000009_tiger ('tiger')"]
    assert report.examples["class_without_samples"] == ["reccoon", "owl"]
    summary = report.summary()
    assert "checked 11 samples, kept 4" in summary
    assert "error missing_image: 1 (e.g. 000005_reccoon)" in summary
    assert json.loads(json.dumps(report.to_json()))["counts"]["mask_values_0255"] == 2


def test_header_check_finds_sizes_and_truncation(messy: DataPaths, tmp_path: Path) -> None:
    records, report = resolve_records(messy, "train", check_files="header")
    assert report.counts["size_mismatch_resized"] == 1
    assert report.counts["unreadable_image"] == 1  # the PNG lacks its IEND trailer
    assert report.counts["unreadable_mask"] == 1
    assert report.counts["mask_values_0255"] == 0  # mask values need check_files="full"
    assert "000007_reccoon" not in [r.unique_id for r in records]
    _, none = resolve_records(messy, "train", check_files="none")
    assert none.counts["missing_image"] == 1 and none.counts["size_mismatch_resized"] == 0


def test_truncated_jpeg_is_found_by_the_header_check(messy: DataPaths) -> None:
    from ovcamo.data.ovcamo_format import _inspect_image

    path = messy.train_image_dir / "x.jpg"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 90).save(path, quality=90)
    assert _inspect_image(path, full=False) == ((32, 32), None)
    path.write_bytes(path.read_bytes()[:-30])
    assert _inspect_image(path, full=False) == (None, None)


def test_strict_stops_with_the_whole_report(messy: DataPaths) -> None:
    with pytest.raises(DatasetValidationError) as info:
        resolve_records(messy, "train", strict=True, check_files="full")
    message = str(info.value)
    for kind in ("path_escape", "duplicate_unique_id", "unknown_class", "missing_mask"):
        assert kind in message
    assert info.value.report.n_errors == 7
    with pytest.raises(DatasetValidationError):
        OVCamoDataset(messy, "train", strict=True)


def test_test_split_is_separate(messy: DataPaths) -> None:
    records, report = resolve_records(messy, "test", check_files="full")
    assert [r.unique_id for r in records] == ["000010_moth"]
    assert report.n_errors == 0 and report.n_checked == 1


def test_dataset_yields_converted_samples(messy: DataPaths) -> None:
    ds = OVCamoDataset(messy, "train")
    assert len(ds) == 4 and ds.validation.n_errors == 7
    assert ds.class_names == ["snow leopard", "reccoon", "owl"]
    for sample in ds:
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == (12, 16, 3)
        assert sample["mask"].dtype == bool and sample["mask"].shape == (12, 16)
        np.testing.assert_array_equal(sample["mask"], _mask() > 0)
        assert sample["class_name"] == "snow leopard"
    resized = ds[3]
    assert resized["unique_id"] == "000004_snow leopard"


def test_path_escape_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert safe_join(root, "a b/c.png") == (root / "a b" / "c.png").resolve()
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", "", "a\x00b"):
        with pytest.raises(PathEscapeError):
            safe_join(root, bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(PathEscapeError, match="outside"):
        safe_join(root, "link/x.png")


def test_read_image_conversions(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    _save(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    _save(tmp_path / "gray.png", rgb[..., 1])
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (5, 7, 3)
    np.testing.assert_array_equal(gray[..., 2], rgb[..., 1])
    _save(tmp_path / "rgba.png", np.dstack([rgb, np.zeros((5, 7), np.uint8)]))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    _save(tmp_path / "deep.png", rgb[..., 0].astype(np.uint16) * 257)
    deep = read_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and deep.shape == (5, 7, 3)
    np.testing.assert_array_equal(deep[..., 0], rgb[..., 0])
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (5, 7, 3)


@pytest.mark.parametrize(
    "encode",
    [
        lambda m: m.astype(np.uint8),
        lambda m: m.astype(np.uint8) * 255,
        lambda m: np.where(m, 37, 0).astype(np.uint8),
        lambda m: np.where(m, 1000, 0).astype(np.uint16),
        lambda m: np.dstack([np.zeros_like(m, np.uint8), m.astype(np.uint8) * 3, m * 0]).astype(
            np.uint8
        ),
    ],
    ids=["0/1", "0/255", "soft", "16-bit", "rgb"],
)
def test_read_mask_any_nonzero_is_foreground(tmp_path: Path, encode) -> None:
    m = _mask() > 0
    _save(tmp_path / "m.png", encode(m))
    got = read_mask(tmp_path / "m.png")
    assert got.dtype == bool
    np.testing.assert_array_equal(got, m)


def test_image_is_resized_to_mask(messy: DataPaths) -> None:
    records, _ = resolve_records(messy, "train")
    small = next(r for r in records if r.unique_id == "000004_snow leopard")
    sample = load_sample(small)
    assert sample["image"].shape == (12, 16, 3)
    assert sample["mask"].shape == (12, 16)


def _records(n_per_class: dict[str, int]) -> list:
    from ovcamo.data import Record

    out = []
    for cls, n in n_per_class.items():
        for i in range(n):
            uid = f"{i:06d}_{cls}"
            info = SampleInfo(uid, cls, "x.jpg", "x.png", i)
            out.append(Record(info, "train", Path(uid + ".jpg"), Path(uid + ".png")))
    return out


def test_holdout_split_deterministic_disjoint_and_order_free() -> None:
    records = _records({"snow leopard": 20, "reccoon": 7, "owl": 2, "moth": 1})
    kept, held = holdout_split(records, 0.2, seed=0)
    kept_ids, held_ids = {r.unique_id for r in kept}, {r.unique_id for r in held}
    assert not kept_ids & held_ids
    assert kept_ids | held_ids == {r.unique_id for r in records}
    per_class = {
        c: sum(r.class_name == c for r in held) for c in ("snow leopard", "reccoon", "owl")
    }
    assert per_class == {"snow leopard": 4, "reccoon": 1, "owl": 1}
    assert not any(r.class_name == "moth" for r in held)  # a single sample stays in training

    again = holdout_split(list(reversed(records)), 0.2, seed=0)[1]
    assert {r.unique_id for r in again} == held_ids
    other = holdout_split(records, 0.2, seed=1)[1]
    assert {r.unique_id for r in other} != held_ids
    assert holdout_split(records, 0.0)[1] == []
    with pytest.raises(ValueError, match="holdout fraction"):
        holdout_split(records, 1.0)


def test_dataset_parts(messy: DataPaths) -> None:
    full = OVCamoDataset(messy, "train")
    train = OVCamoDataset(messy, "train", part="train", holdout_fraction=0.25)
    val = OVCamoDataset(messy, "train", part="val", holdout_fraction=0.25)
    assert len(val) == 1 and len(train) == 3
    assert {r.unique_id for r in train.records} | {r.unique_id for r in val.records} == {
        r.unique_id for r in full.records
    }
    with pytest.raises(ValueError, match="held-out part exists only"):
        OVCamoDataset(messy, "test", part="val")


def test_data_paths_from_cfg_and_paths_json(tmp_path: Path) -> None:
    paths = _paths(tmp_path / "ds")
    atomic_write_json(tmp_path / "ds" / "paths.json", paths.to_json(relative_to=tmp_path / "ds"))
    assert DataPaths.from_paths_json(tmp_path / "ds" / "paths.json") == DataPaths(
        *(Path(os.path.normpath(p)) for p in paths.to_json().values())
    )
    with pytest.raises(KeyError, match="data.test_mask_dir"):
        DataPaths.from_cfg({k: "x" for k in paths.to_json() if k != "test_mask_dir"})


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": Boom()})
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_gives_files_the_umask_mode(tmp_path: Path) -> None:
    from ovcamo.data.io import atomic_write_text

    target = tmp_path / "x.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
