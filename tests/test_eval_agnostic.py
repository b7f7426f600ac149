"""``ovcamo-eval pred_dir=… gt_dir=…``: class-agnostic COD sets (COD10K, CAMO, NC4K layouts),
scored by the toolkit's per-sample formulas and compared number by number with pysodmetrics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from py_sod_metrics import (
    MAE,
    Emeasure,
    Fmeasure,
    FmeasureV2,
    IOUHandler,
    Smeasure,
    WeightedFmeasure,
)

from ovcamo.cli import evaluate
from ovcamo.engine.evaluate import AGNOSTIC_SAMPLE_COLUMNS, METRIC_KEYS

#: Largest difference allowed from pysodmetrics: float64 rounding of sums taken in another order.
TOL = 1e-12


def _blob(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.35, 0.6), w * rng.uniform(0.35, 0.6)
    r = min(h, w) * rng.uniform(0.15, 0.3)
    return (yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.7, 1.3)) ** 2 < r * r


def write_cod_set(root: Path, n: int = 6, seed: int = 0, jpg: tuple[int, ...] = (1,)) -> None:
    """``root/pred`` (``<name>.png``, ``<name>.jpg`` for the indices in ``jpg``) and
    ``root/gt`` (``<name>.png`` masks, 0/255): soft maps of random sizes around a blob GT."""
    rng = np.random.default_rng(seed)
    (root / "pred").mkdir(parents=True)
    (root / "gt").mkdir(parents=True)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(24, 70, 2))
        gt = _blob(h, w, rng)
        soft = gt * rng.uniform(90, 200) + rng.normal(50, 35, (h, w)) + np.linspace(0, 40, w)
        pred = np.clip(soft, 0, 255).astype(np.uint8)
        name = f"COD10K-CAM-{i:04d}"
        Image.fromarray((gt * 255).astype(np.uint8)).save(root / "gt" / f"{name}.png")
        ext = ".jpg" if i in jpg else ".png"
        Image.fromarray(pred).save(root / "pred" / f"{name}{ext}", quality=90)


def reference_metrics(pred_dir: Path, gt_dir: Path) -> dict[str, float]:
    """pysodmetrics over the set, read as the usual COD evaluation scripts read it (OpenCV
    grayscale), IoU from its FmeasureV2 IOUHandler."""
    sm, wfm, mae, fm, em = Smeasure(), WeightedFmeasure(), MAE(), Fmeasure(), Emeasure()
    iou = FmeasureV2({"iou": IOUHandler(with_dynamic=True, with_adaptive=True)})
    for gt_path in sorted(gt_dir.glob("*.png")):
        pred_path = next(pred_dir.glob(f"{gt_path.stem}.*"))
        pred = cv2.imread(str(pred_path), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for m in (sm, wfm, mae, fm, em, iou):
                m.step(pred, gt)
    f, e, i = fm.get_results()["fm"], em.get_results()["em"], iou.get_results()["iou"]
    return {
        "sm": sm.get_results()["sm"],
        "wfm": wfm.get_results()["wfm"],
        "mae": mae.get_results()["mae"],
        "adpfm": f["adp"],
        "avgfm": f["curve"].mean(),
        "maxfm": f["curve"].max(),
        "adpem": e["adp"],
        "avgem": e["curve"].mean(),
        "maxem": e["curve"].max(),
        "adpiou": i["adaptive"],
        "avgiou": i["dynamic"].mean(),
        "maxiou": i["dynamic"].max(),
    }


def _eval(*args: str) -> None:
    evaluate(["figures=false", "num_workers=1", *args])


def test_agnostic_metrics_equal_pysodmetrics(tmp_path, capsys):
    write_cod_set(tmp_path)
    out = tmp_path / "eval"
    _eval(f"pred_dir={tmp_path / 'pred'}", f"gt_dir={tmp_path / 'gt'}", f"out_dir={out}")
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["mode"] == "class-agnostic" and summary["num_samples"] == 6
    ours = summary["metrics"]
    assert list(ours) == list(METRIC_KEYS)
    ref = reference_metrics(tmp_path / "pred", tmp_path / "gt")
    for key in METRIC_KEYS:
        assert abs(ours[key] - float(ref[key])) <= TOL, (key, ours[key], float(ref[key]))
    table = (out / "metrics.md").read_text()
    assert "| Sm | Fωβ | MAE | adpFβ | meanFβ | maxFβ | adpEm | meanEm | maxEm |" in table
    assert f"{ours['avgiou']:.4f}" in table
    rows = (out / "per_sample.csv").read_text().splitlines()
    assert rows[0] == ",".join(AGNOSTIC_SAMPLE_COLUMNS) and len(rows) == 7
    assert rows[2].startswith("COD10K-CAM-0001,")  # the .jpg prediction is scored too
    assert "results written to" in capsys.readouterr().out


def test_names_on_one_side_only_are_an_error(tmp_path, capsys):
    write_cod_set(tmp_path, n=4)
    (tmp_path / "pred" / "COD10K-CAM-0002.png").rename(tmp_path / "pred" / "stray.png")
    (tmp_path / "pred" / "extra.png").write_bytes(
        (tmp_path / "pred" / "COD10K-CAM-0000.png").read_bytes()
    )
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        _eval(f"pred_dir={tmp_path / 'pred'}", f"gt_dir={tmp_path / 'gt'}", f"out_dir={out}")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "prediction without a GT mask" in err and "(2): extra.png, stray.png" in err
    assert "GT mask without a prediction" in err and "(1): COD10K-CAM-0002.png" in err
    assert "matched by file name" in err
    assert not out.exists()


def test_two_predictions_for_one_name_and_allow_missing(tmp_path, capsys):
    write_cod_set(tmp_path, n=3, jpg=())
    pred = tmp_path / "pred"
    Image.open(pred / "COD10K-CAM-0000.png").save(pred / "COD10K-CAM-0000.jpg")
    out = tmp_path / "eval"
    args = (f"pred_dir={pred}", f"gt_dir={tmp_path / 'gt'}", f"out_dir={out}")
    with pytest.raises(SystemExit):
        _eval(*args)
    err = capsys.readouterr().err
    assert "two predictions for one sample (1): COD10K-CAM-0000.jpg / COD10K-CAM-0000.png" in err
    (pred / "COD10K-CAM-0000.jpg").unlink()
    (pred / "COD10K-CAM-0002.png").unlink()
    _eval(*args, "allow_missing=true")
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["num_samples"] == 2 and summary["missing"] == ["COD10K-CAM-0002.png"]
