"""A trained model on real files: ``ovcamo-eval checkpoint=`` (predict, then score) and
``ovcamo-predict`` / ``model.predict`` on a user's images, with a tiny randomly initialised micro
BaCLIP saved as ``ovcamo-train`` saves one; every run loads that checkpoint for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _engine_data import TEST_CLASSES, write_tiny_checkpoint, write_tiny_dataset
from omegaconf import OmegaConf
from PIL import Image

from ovcamo.data import DataPaths, OVCamoDataset
from ovcamo.data.io import read_gray, write_png
from ovcamo.data.transforms import EvalTransform
from ovcamo.engine.evaluate import score_prediction_dir
from ovcamo.engine.predict import eval_loader, iter_predictions
from ovcamo.engine.predict_images import OVCAMO_TEST, main, resolve_classes
from ovcamo.metrics import METRIC_KEYS, OVCOSMetric, to_uint8_prediction
from ovcamo.models import BaCLIP, load_model
from ovcamo.models.predictor import model_input

CANDIDATES = ["owl", "frog", "crab"]
# The subprocess runs torch with several threads, the test with one (xdist) or several: logits
# agree to float rounding, so a uint8 mask level may differ by one.
LEVEL_TOLERANCE = 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best")


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> BaCLIP:
    return load_model(checkpoint)


def _run(cli: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = f"from ovcamo.cli import {cli}; {cli}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_eval_checkpoint_predicts_then_scores_through_the_command(
    checkpoint: Path, model: BaCLIP, tmp_path: Path
) -> None:
    data = write_tiny_dataset(tmp_path / "data", size=32)
    paths = DataPaths.from_paths_json(data / "paths.json")
    out = tmp_path / "eval"
    # Two scoring processes after predicting in the same process: the case where forked workers
    # could inherit a lock of torch's thread pools; a hang fails here by the timeout.
    done = _run(
        "evaluate",
        f"checkpoint={checkpoint}",
        *(f"data.{k}={v}" for k, v in paths.to_json().items()),
        f"out_dir={out}",
        "num_workers=2",
        "figures=false",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["num_samples"] == 6 and saved["split"] == "test"

    # What the command wrote is this model's prediction of every test sample...
    dataset = OVCamoDataset(paths, "test", transform=EvalTransform(32))
    loader = eval_loader(dataset, batch_size=4, num_workers=0)
    expected = {
        item["unique_id"]: item
        for item in iter_predictions(
            model, loader, dataset.class_names, torch.device("cpu"), progress=False
        )
    }
    files = {p.name: p for p in (out / "predictions").iterdir()}
    assert sorted(files) == sorted(f"[{e['pred_class']}]{u}.png" for u, e in expected.items())
    metric = OVCOSMetric()
    for uid, item in expected.items():
        written = read_gray(files[f"[{item['pred_class']}]{uid}.png"])
        assert written.shape == item["gt"].shape
        diff = np.abs(written.astype(int) - item["pred"].astype(int)).max()
        assert diff <= LEVEL_TOLERANCE
        metric.update(written, item["gt"], item["pred_class"], item["gt_class"], uid)
    # ...and metrics.json scores exactly those files.
    reference = metric.compute()
    for key in METRIC_KEYS:
        assert saved["metrics"][key] == pytest.approx(reference[key], abs=1e-12), key
    assert saved["diagnostics"]["agnostic_IoU"] == pytest.approx(reference["agnostic_IoU"])


def _images(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"a": (40, 56), "b": (33, 20), "c": (64, 64)}
    arrays = {}
    for name, (h, w) in shapes.items():
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[h // 4 : h // 2, w // 4 : w // 2] = (200, 120, 40)
        arrays[name] = img
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "a.png", arrays["a"])
    Image.fromarray(arrays["b"]).save(folder / "b.bmp")
    write_png(folder / "c.png", arrays["c"])
    (folder / "notes.txt").write_text("not an image, and not taken from a folder", encoding="utf-8")
    return arrays


def test_model_predict_takes_a_path_a_pil_image_or_an_array(model: BaCLIP, tmp_path: Path) -> None:
    arrays = _images(tmp_path / "img")
    rgb = arrays["a"]
    by_array = model.predict(rgb, CANDIDATES)
    by_path = model.predict(tmp_path / "img" / "a.png", CANDIDATES)
    by_pil = model.predict(Image.fromarray(rgb), CANDIDATES)
    for other in (by_path, by_pil):
        np.testing.assert_array_equal(other.mask, by_array.mask)
        assert other.class_probs == by_array.class_probs
    assert by_array.mask.shape == rgb.shape[:2] and by_array.mask.dtype == np.uint8
    assert by_array.mask_probs.shape == rgb.shape[:2]
    assert sum(by_array.class_probs.values()) == pytest.approx(1.0)
    best = max(by_array.class_probs, key=by_array.class_probs.get)
    assert by_array.class_name == best and by_array.score == by_array.class_probs[best]

    # The evaluator's post-processing of the model's logits on the resized image.
    x, size = model_input(rgb, 32)
    out = model(x, CANDIDATES)
    expected = to_uint8_prediction(out["mask_logits"][0, 0], size)
    np.testing.assert_array_equal(by_array.mask, expected)

    with pytest.raises(ValueError, match="uint8 H×W×3"):
        model.predict(rgb.astype(np.float32), CANDIDATES)
    with pytest.raises(TypeError, match="a path, a PIL image"):
        model.predict([rgb, {"not": "an image"}], CANDIDATES)


def _cfg(**kw):
    base = {
        "checkpoint": None,
        "images": None,
        "classes": OVCAMO_TEST,
        "out_dir": None,
        "format": "masks",
        "overlay": True,
        "device": "cpu",
        "batch_size": 2,
    }
    base.update(kw)
    return OmegaConf.create(base)


def test_predict_command_writes_masks_overlays_and_probabilities(
    checkpoint: Path, model: BaCLIP, tmp_path: Path
) -> None:
    arrays = _images(tmp_path / "img")
    out = tmp_path / "pred"
    done = _run(
        "predict",
        f"checkpoint={checkpoint}",
        f"images={tmp_path / 'img'}",
        f"classes=[{','.join(CANDIDATES)}]",
        f"out_dir={out}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert results["classes"] == CANDIDATES and results["format"] == "masks"
    assert [Path(r["image"]).stem for r in results["images"]] == ["a", "b", "c"]
    for record in results["images"]:
        name = Path(record["image"]).stem
        rgb = arrays[name]
        mask = read_gray(out / record["mask"])
        assert mask.shape == rgb.shape[:2] and record["size"] == list(rgb.shape[:2])
        api = model.predict(rgb, CANDIDATES)
        assert np.abs(mask.astype(int) - api.mask.astype(int)).max() <= LEVEL_TOLERANCE
        assert set(record["class_probs"]) == set(CANDIDATES)
        assert sum(record["class_probs"].values()) == pytest.approx(1.0)
        assert record["class"] == max(record["class_probs"], key=record["class_probs"].get)
        assert record["score"] == record["class_probs"][record["class"]]
        overlay = np.asarray(Image.open(out / record["overlay"]))
        assert overlay.shape == (*rgb.shape[:2], 3)
        # The tint changes the image where the mask is high and nowhere the mask is 0.
        assert not np.array_equal(overlay, rgb)
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlays", "predictions.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "pred"]


def test_format_ovcamo_is_read_by_the_evaluator(checkpoint: Path, tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", size=32)
    paths = DataPaths.from_paths_json(data / "paths.json")
    out = tmp_path / "pred"
    main(
        _cfg(
            checkpoint=str(checkpoint),
            images=str(paths.test_image_dir),
            classes=list(TEST_CLASSES),
            out_dir=str(out),
            format="ovcamo",
            overlay=False,
        )
    )
    names = sorted(p.name for p in (out / "predictions").iterdir())
    assert len(names) == 6 and all(n.startswith(("[frog]", "[crab]")) for n in names)
    results = score_prediction_dir(out / "predictions", paths, num_workers=1)
    assert results.num_samples == 6
    assert not (out / "overlays").exists()


def test_candidate_classes(tmp_path: Path) -> None:
    test_names = resolve_classes(OVCAMO_TEST)
    assert len(test_names) == 61 and len(set(test_names)) == 61
    assert resolve_classes(OmegaConf.create({"c": ["owl", " frog "]}).c) == ["owl", "frog"]
    assert resolve_classes("owl, frog") == ["owl", "frog"]
    listing = tmp_path / "classes.txt"
    listing.write_text("# my classes\nowl\n\nsnow leopard\n", encoding="utf-8")
    assert resolve_classes(str(listing)) == ["owl", "snow leopard"]
    data = write_tiny_dataset(tmp_path / "data", size=24)
    assert resolve_classes(str(data / "class_info.json")) == ["snow leopard", "reccoon", "owl"] + [
        *TEST_CLASSES
    ]


def test_a_missing_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _images(tmp_path / "img")
    with pytest.raises(SystemExit) as info:
        main(
            _cfg(
                checkpoint=str(tmp_path / "nope"),
                images=str(tmp_path / "img"),
                out_dir=str(tmp_path / "x"),
            )
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"checkpoint={tmp_path / 'nope'}: no model at" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _images(tmp_path / "img")
    out = tmp_path / "pred"

    def fails(pattern: str, **kw) -> str:
        with pytest.raises(SystemExit) as info:
            main(_cfg(**{"checkpoint": str(checkpoint), "out_dir": str(out), **kw}))
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("ovcamo-predict: ") and pattern in err
        assert "Traceback" not in err and err.count("\n") == 1
        return err

    fails("no file, folder or glob match", images=str(tmp_path / "img" / "*.jpeg"))
    fails("class file not found", images=str(tmp_path / "img"), classes="missing/classes.txt")
    fails("class file not found", images=str(tmp_path / "img"), classes="classes.txt")
    fails("names listed twice: owl", images=str(tmp_path / "img"), classes=["owl", "owl"])
    fails("format=png", images=str(tmp_path / "img"), format="png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    err = fails("unreadable image (1)", images=str(tmp_path / "img"), classes=CANDIDATES)
    assert "broken.png" in err
    assert not out.exists()

    # A truncated file passes the header check and fails while decoding: still nothing written.
    good = (tmp_path / "img" / "a.png").read_bytes()
    (tmp_path / "img" / "broken.png").write_bytes(good[: len(good) // 2])
    fails("broken.png", images=str(tmp_path / "img"), classes=CANDIDATES)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # A folder of someone else's files is never replaced; an earlier output is, whole.
    (tmp_path / "img" / "broken.png").unlink()
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    fails("did not write", images=str(tmp_path / "img"), classes=CANDIDATES)
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"
    (out / "keep.txt").unlink()
    run = {"checkpoint": str(checkpoint), "images": str(tmp_path / "img"), "out_dir": str(out)}
    main(_cfg(**run, classes=CANDIDATES))
    first = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    (tmp_path / "img" / "c.png").unlink()
    main(_cfg(**run, classes=CANDIDATES, overlay=False))
    second = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert len(first["images"]) == 3 and len(second["images"]) == 2
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png"]
    assert not (out / "overlays").exists()
    fails("it is a file", images=str(tmp_path / "img"), out_dir=str(tmp_path / "img" / "a.png"))
    fails("a.png is a file", images=str(tmp_path / "img"), out_dir=str(tmp_path / "img/a.png/sub"))
