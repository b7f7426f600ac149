"""ovcamo-eval: scoring a prediction folder, every bad-input check, atomic results, the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovcamo.data import ClassInfo, DataPaths, SampleInfo, write_class_info, write_sample_info
from ovcamo.data.io import write_png
from ovcamo.engine.evaluate import (
    EvaluationError,
    main,
    results_markdown,
    score_prediction_dir,
    scoring_context,
    write_results,
)
from ovcamo.metrics import (
    DIAGNOSTIC_KEYS,
    METRIC_KEYS,
    PAPER_ALIASES,
    OVCOSMetric,
    read_class_ciou,
)

CLASSES = [
    ClassInfo("owl", 1, "bird", ("owl",), "train", 3),
    ClassInfo("snow leopard", 2, "mammal", ("snow leopard",), "test", 3),
    ClassInfo("reccoon", 3, "mammal", ("reccoon",), "test", 3),
    ClassInfo("moth", 4, "insect", ("moth",), "test", 2),
    ClassInfo("crab", 5, "crustacean", ("crab",), "test", 2),
]
TEST_IDS = {
    "snow leopard": ["000001_snow leopard", "000002_snow leopard", "000003_snow leopard"],
    "reccoon": ["000004_reccoon", "000005_reccoon", "000006_reccoon"],
    "moth": ["000007_moth", "000008_moth"],
    "crab": ["000009_crab", "000010_crab"],
}
TRAIN_IDS = {"owl": ["000011_owl", "000012_owl", "000013_owl"]}


def _blob(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    return (yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) * rng.uniform(0.15, 0.3)) ** 2


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[DataPaths, dict[str, np.ndarray], dict[str, str]]:
    """Two json files and mask folders only (the evaluator never reads images)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "OVCamo"
    paths = DataPaths(
        root / "class_info.json",
        root / "sample_info.json",
        root / "train" / "image",
        root / "train" / "mask",
        root / "test" / "image",
        root / "test" / "mask",
    )
    infos, masks, classes = [], {}, {}
    for split, ids in (("test", TEST_IDS), ("train", TRAIN_IDS)):
        for cls, uids in ids.items():
            for uid in uids:
                h, w = rng.integers(30, 60), rng.integers(30, 60)
                mask = _blob(h, w, rng)
                # Masks stored as 0/255 and as 0/1: both mean the same.
                scale = 255 if len(infos) % 2 else 1
                write_png(paths.mask_dir(split) / f"{uid}.png", mask.astype(np.uint8) * scale)
                infos.append(SampleInfo(uid, cls, f"{uid}.jpg", f"{uid}.png", len(infos)))
                masks[uid], classes[uid] = mask, cls
    write_class_info(paths.class_info, CLASSES)
    write_sample_info(paths.sample_info, infos)
    return paths, masks, classes


def _predict(
    pred_dir: Path,
    masks: dict[str, np.ndarray],
    classes: dict[str, str],
    ids: list[str],
    wrong: frozenset[str] = frozenset(),
    seed: int = 1,
) -> dict[str, tuple[np.ndarray, str]]:
    rng = np.random.default_rng(seed)
    out = {}
    for uid in ids:
        m = masks[uid]
        pred = np.clip(m * 160 + rng.normal(50, 40, m.shape), 0, 255).astype(np.uint8)
        cls = ("crab" if classes[uid] != "crab" else "moth") if uid in wrong else classes[uid]
        write_png(pred_dir / f"[{cls}]{uid}.png", pred)
        out[uid] = (pred, cls)
    return out


def _test_ids() -> list[str]:
    return [u for uids in TEST_IDS.values() for u in uids]


def test_scores_match_the_metric_and_files_are_written(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    preds = _predict(tmp_path / "pred", masks, classes, _test_ids(), wrong={"000004_reccoon"})
    results = score_prediction_dir(tmp_path / "pred", paths, num_workers=2)

    metric = OVCOSMetric()
    for uid, (pred, cls) in preds.items():
        metric.update(pred, masks[uid], cls, classes[uid], uid)
    expected = metric.compute()
    assert {**results.metrics, **results.diagnostics} == pytest.approx(expected, abs=1e-12)
    assert results.num_samples == 10
    assert [r["class"] for r in results.per_class] == ["snow leopard", "reccoon", "moth", "crab"]
    reccoon = next(r for r in results.per_class if r["class"] == "reccoon")
    assert reccoon["class_accuracy"] == pytest.approx(2 / 3)
    assert reccoon["agnostic_IoU"] > reccoon["avgiou"]
    assert results.hard["source"] == "this run's own ranking" and len(results.hard["classes"]) == 1

    out = write_results(results, tmp_path / "eval")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "confusion.csv",
        "confusion.md",
        "hard_classes.csv",
        "hard_classes.md",
        "metrics.json",
        "metrics.md",
        "per_class.csv",
        "per_sample.csv",
    ]
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["metrics"]["cIoU"] == pytest.approx(expected["avgiou"])
    assert set(saved["metrics"]) == set(METRIC_KEYS) | set(PAPER_ALIASES)
    diagnostics = saved["diagnostics"]
    assert set(diagnostics) == {*DIAGNOSTIC_KEYS, "note"}
    assert "not part of the official OVCOS protocol" in diagnostics["note"]
    assert diagnostics["class_accuracy"] == pytest.approx(0.9)
    assert diagnostics["agnostic_IoU"] == pytest.approx(expected["agnostic_IoU"], abs=1e-12)
    assert diagnostics["agnostic_IoU"] > saved["metrics"]["cIoU"]
    assert saved["num_samples"] == 10
    md = (out / "metrics.md").read_text(encoding="utf-8")
    assert "cFωβ" in md and f"{expected['sm']:.3f}" in md
    diag_md = md[md.index("## Diagnostics") :]
    assert "class-agnostic (diagnostic)" in diag_md and f"{expected['agnostic_IoU']:.3f}" in diag_md
    per_class = read_class_ciou(out / "per_class.csv")
    assert set(per_class) == set(TEST_IDS)
    with (out / "per_class.csv").open(encoding="utf-8") as f:
        rows = {r["class"]: r for r in csv.DictReader(f)}
    assert float(rows["reccoon"]["class_accuracy"]) == pytest.approx(2 / 3)
    assert float(rows["reccoon"]["agnostic_IoU"]) == pytest.approx(reccoon["agnostic_IoU"])
    with (out / "per_sample.csv").open(encoding="utf-8") as f:
        samples = list(csv.DictReader(f))
    # The per-sample rows reproduce the diagnostics.
    assert np.mean([float(r["agnostic_IoU"]) for r in samples]) == pytest.approx(
        diagnostics["agnostic_IoU"]
    )
    assert np.mean([r["correct"] == "True" for r in samples]) == pytest.approx(0.9)


def test_single_process_equals_pool(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    _predict(tmp_path / "pred", masks, classes, _test_ids())
    one = score_prediction_dir(tmp_path / "pred", paths, num_workers=1)
    two = score_prediction_dir(tmp_path / "pred", paths, num_workers=2)
    assert one.metrics == two.metrics and one.diagnostics == two.diagnostics
    assert one.per_sample == two.per_sample


def test_scoring_workers_never_hold_torch() -> None:
    """This process has torch loaded (conftest imports it), so forked workers would inherit it and
    could hang on one of its locks; scoring workers must start without it."""
    from concurrent.futures import ProcessPoolExecutor

    assert "torch" in sys.modules
    with ProcessPoolExecutor(max_workers=2, mp_context=scoring_context()) as pool:
        # eval is picklable by reference, so the worker imports nothing of this test module.
        held = list(pool.map(eval, ["'torch' in __import__('sys').modules"] * 4))
        scorer = pool.submit(eval, "'ovcamo.engine.evaluate' in __import__('sys').modules")
        assert scorer.result()
    assert held == [False] * 4


def test_reference_fixes_the_hard_classes(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    _predict(tmp_path / "pred", masks, classes, _test_ids())
    ref = tmp_path / "ref.csv"
    ref.write_text(
        "class,avgiou\nsnow leopard,0.9\nreccoon,0.8\nmoth,0.05\ncrab,0.7\n", encoding="utf-8"
    )
    results = score_prediction_dir(tmp_path / "pred", paths, reference=ref, num_workers=1)
    assert results.hard["source"] == "reference run's ranking"
    assert results.hard["classes"] == ["moth"]
    assert results.hard["num_samples"] == 2
    with pytest.raises(EvaluationError, match="reference"):
        score_prediction_dir(tmp_path / "pred", paths, reference=tmp_path / "nope.csv")


def test_ovcoser_ranking_fixes_the_hard_classes_and_the_output_says_so(
    dataset, tmp_path: Path
) -> None:
    paths, masks, classes = dataset
    _predict(tmp_path / "pred", masks, classes, _test_ids())
    ranking = tmp_path / "ovcoser_ranking.txt"
    ranking.write_text("crab\nsnow leopard\nmoth\nreccoon\n", encoding="utf-8")
    results = score_prediction_dir(tmp_path / "pred", paths, hard_ranking=ranking, num_workers=1)
    assert results.hard["source"] == "OVCoser ranking" and results.hard["classes"] == ["crab"]
    out = write_results(results, tmp_path / "eval")
    assert "Hard classes (1, the hardest quarter; OVCoser ranking): crab" in (
        out / "metrics.md"
    ).read_text(encoding="utf-8")
    assert "| crab | — |" in (out / "hard_classes.md").read_text(encoding="utf-8")
    assert (out / "hard_classes.csv").read_text(encoding="utf-8") == "class,ranking_ciou\ncrab,\n"
    own = score_prediction_dir(tmp_path / "pred", paths, num_workers=1)
    assert "the hardest quarter; this run's own ranking" in results_markdown(own)
    with pytest.raises(EvaluationError, match="hard_ranking"):
        score_prediction_dir(tmp_path / "pred", paths, hard_ranking=tmp_path / "nope.txt")


def test_train_split_subset(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    held = ["000011_owl", "000013_owl"]
    _predict(tmp_path / "pred", masks, classes, ["000011_owl", "000012_owl", "000013_owl"])
    results = score_prediction_dir(
        tmp_path / "pred", paths, split="train", unique_ids=held, num_workers=1
    )
    assert results.num_samples == 2
    assert [r["unique_id"] for r in results.per_sample] == held
    assert results.ignored == ["[owl]000012_owl.png"]
    with pytest.raises(EvaluationError, match="requested unique_id not in the train split"):
        score_prediction_dir(tmp_path / "pred", paths, split="train", unique_ids=["000001_x"])


def _expect_error(pred_dir: Path, paths: DataPaths, pattern: str, **kw) -> str:
    with pytest.raises(EvaluationError, match=pattern) as info:
        score_prediction_dir(pred_dir, paths, num_workers=1, **kw)
    return str(info.value)


def test_bad_names_classes_and_ids_are_listed(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    _predict(pred, masks, classes, _test_ids())
    write_png(pred / "000001_snow leopard.png", np.zeros((4, 4), np.uint8))
    write_png(pred / "[tiger]000002_snow leopard.png", np.zeros((4, 4), np.uint8))
    write_png(pred / "[moth]999999_moth.png", np.zeros((4, 4), np.uint8))
    write_png(pred / "[moth]000011_owl.png", np.zeros((4, 4), np.uint8))
    (pred / "[moth]000007_moth.jpg").write_bytes(b"not a png")
    (pred / ".[moth]000007_moth.png.tmp").write_bytes(b"temporary of an atomic writer")
    msg = _expect_error(pred, paths, "without the \\[<class>\\] prefix")
    assert "000001_snow leopard.png" in msg
    assert "unknown predicted class (1): [tiger]000002_snow leopard.png" in msg
    assert "prediction for no GT sample (2)" in msg and "999999_moth" in msg
    assert "not a .png file (1)" in msg
    assert ".tmp" not in msg


def test_missing_predictions(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    ids = _test_ids()
    _predict(pred, masks, classes, ids[2:])
    msg = _expect_error(pred, paths, "GT sample without prediction \\(2\\)")
    assert ids[0] in msg and ids[1] in msg
    results = score_prediction_dir(pred, paths, allow_missing=True, num_workers=1)
    assert results.missing == ids[:2] and results.num_samples == len(ids) - 2
    out = write_results(results, tmp_path / "eval")
    assert "2 GT samples had no prediction" in (out / "metrics.md").read_text(encoding="utf-8")
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["missing"] == ids[:2]


def test_shape_mismatch_and_resize(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    ids = _test_ids()
    _predict(pred, masks, classes, ids)
    uid = ids[3]
    h, w = masks[uid].shape
    write_png(pred / f"[{classes[uid]}]{uid}.png", np.zeros((h + 3, w), np.uint8) + 9)
    msg = _expect_error(pred, paths, "size differs from the GT")
    assert uid in msg
    results = score_prediction_dir(pred, paths, resize_to_gt=True, num_workers=1)
    assert results.resized == [uid]


def test_non_8bit_and_truncated_pngs(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    ids = _test_ids()
    _predict(pred, masks, classes, ids)
    uid = ids[0]
    h, w = masks[uid].shape
    Image.fromarray(np.zeros((h, w), np.uint16) + 1000).save(pred / f"[{classes[uid]}]{uid}.png")
    _expect_error(pred, paths, "not an 8-bit PNG \\(1\\)")
    Image.fromarray(np.zeros((h, w), bool)).save(pred / f"[{classes[uid]}]{uid}.png")
    _expect_error(pred, paths, "mode 1")

    _predict(pred, masks, classes, [uid])
    target = pred / f"[{classes[uid]}]{uid}.png"
    target.write_bytes(target.read_bytes()[:-40])
    msg = _expect_error(pred, paths, "unreadable")
    assert uid in msg


def test_rgb_predictions_are_read_as_gray(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    preds = _predict(pred, masks, classes, _test_ids())
    gray = score_prediction_dir(pred, paths, num_workers=1).metrics
    for uid, (p, cls) in preds.items():
        Image.fromarray(np.repeat(p[..., None], 3, axis=2)).save(pred / f"[{cls}]{uid}.png")
    assert score_prediction_dir(pred, paths, num_workers=1).metrics == gray


def test_bad_dataset_files(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    _predict(pred, masks, classes, _test_ids())
    (paths.mask_dir("test") / "000006_reccoon.png").write_bytes(b"not a png")
    _expect_error(pred, paths, "unreadable GT mask \\(1\\): .*000006_reccoon.png")
    os.remove(paths.mask_dir("test") / "000005_reccoon.png")
    _expect_error(pred, paths, "GT mask file missing \\(1\\)")
    broken = DataPaths(
        paths.class_info,
        tmp_path / "nope.json",
        *(getattr(paths, k) for k in ("train_image_dir", "train_mask_dir")),
        paths.test_image_dir,
        paths.test_mask_dir,
    )
    _expect_error(pred, broken, "sample_info not found")
    _expect_error(tmp_path / "absent", paths, "prediction folder not found")


def _cfg(paths: DataPaths, **kw):
    from omegaconf import OmegaConf

    base = {
        "data": {k: str(v) for k, v in paths.to_json().items()},
        "pred_dir": None,
        "out_dir": None,
        "checkpoint": None,
        "split": "test",
        "part": "all",
        "allow_missing": False,
        "resize_to_gt": False,
        "reference": None,
        "num_workers": 1,
    }
    base.update(kw)
    return OmegaConf.create(base)


def test_main_exits_2_and_writes_nothing_on_bad_input(dataset, tmp_path: Path, capsys) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    _predict(pred, masks, classes, _test_ids()[1:])
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"metrics": {"sm": 0.5}}', encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(_cfg(paths, pred_dir=str(pred), out_dir=str(out)))
    assert info.value.code == 2
    assert "GT sample without prediction" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == {
        "metrics": {"sm": 0.5}
    }
    results = main(_cfg(paths, pred_dir=str(pred), out_dir=str(out), allow_missing=True))
    assert results.num_samples == 9
    assert "cIoU" in json.loads((out / "metrics.json").read_text(encoding="utf-8"))["metrics"]


def test_main_with_checkpoint_scores_predict_to_dir_output(
    dataset, tmp_path: Path, monkeypatch
) -> None:
    import ovcamo.engine.predict as predict

    paths, masks, classes = dataset
    calls = []

    def fake_predict_to_dir(cfg, split="test", part="all"):
        calls.append((cfg.checkpoint, split, part))
        folder = Path(cfg.out_dir) / "predictions"
        _predict(folder, masks, classes, _test_ids())
        return folder

    monkeypatch.setattr(predict, "predict_to_dir", fake_predict_to_dir)
    out = tmp_path / "eval"
    results = main(_cfg(paths, checkpoint="runs/x", out_dir=str(out)))
    assert calls == [("runs/x", "test", "all")]
    assert results.pred_dir == str(out / "predictions")
    assert (out / "metrics.json").is_file()


def test_main_scores_the_held_out_part_of_the_train_split(dataset, tmp_path: Path) -> None:
    from ovcamo.data import OVCamoDataset

    paths, masks, classes = dataset
    owls = TRAIN_IDS["owl"]
    paths.image_dir("train").mkdir(parents=True)
    for uid in owls:
        image = Image.fromarray(np.zeros((*masks[uid].shape, 3), np.uint8))
        image.save(paths.image_dir("train") / f"{uid}.jpg")
    _predict(tmp_path / "pred", masks, classes, owls)
    cfg = _cfg(paths, pred_dir=str(tmp_path / "pred"), out_dir=str(tmp_path / "eval"))
    cfg.split, cfg.part = "train", "val"
    cfg.data.holdout_fraction, cfg.data.holdout_seed = 0.34, 0
    results = main(cfg)
    val = OVCamoDataset(paths, "train", part="val", holdout_fraction=0.34, holdout_seed=0)
    assert [r["unique_id"] for r in results.per_sample] == [r.unique_id for r in val.records]
    assert results.num_samples == 1 and len(results.ignored) == 2
    cfg.split = "test"
    with pytest.raises(SystemExit):
        main(cfg)


def test_cli_end_to_end(dataset, tmp_path: Path) -> None:
    paths, masks, classes = dataset
    pred = tmp_path / "pred"
    _predict(pred, masks, classes, _test_ids())
    out = tmp_path / "eval"
    args = [
        f"pred_dir={pred}",
        f"data.class_info={paths.class_info}",
        f"data.sample_info={paths.sample_info}",
        f"data.test_mask_dir={paths.test_mask_dir}",
        f"out_dir={out}",
    ]
    # The scoring path never imports torch, so its forked workers cannot inherit torch's locks.
    code = (
        "import atexit, sys; "
        "atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
        "from ovcamo.cli import evaluate; evaluate()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "cSm" in done.stdout
    assert "torch loaded: False" in done.stdout
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["num_samples"] == 10
    # The test images are not named on the command line: the bar chart is drawn, the grids are not.
    assert (out / "per_class_ciou.png").stat().st_size > 1000
    assert not (out / "best_samples.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OVCamo", "eval", "pred"]
