"""Plots and image grids: valid PNGs, atomic writes, clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovcamo.report.grids import comparison_grid, image_grid, prediction_grid
from ovcamo.report.plots import grouped_bar, per_class_bar


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _no_temp_files(directory) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_per_class_bar_writes_png(tmp_path):
    rows = [
        {"class": "snow leopard", "cIoU": 0.41, "cSm": 0.5},
        {"class": "reccoon", "cIoU": 0.12, "cSm": 0.3},
        {"class": "owl", "cIoU": 0.77, "cSm": 0.8},
    ]
    out = per_class_bar(rows, tmp_path / "bar.png", highlight=["reccoon"])
    w, h = _png_size(out)
    assert w > 100 and h > 50
    _no_temp_files(tmp_path)
    # More rows make a taller chart: one bar per class.
    more = rows + [{"class": f"c{i}", "cIoU": i / 20} for i in range(20)]
    _, h_more = _png_size(per_class_bar(more, tmp_path / "bar2.png", metric="cIoU"))
    assert h_more > h


def test_per_class_bar_errors(tmp_path):
    with pytest.raises(KeyError, match="cEm"):
        per_class_bar([{"class": "owl", "cIoU": 0.1}], tmp_path / "x.png", metric="cEm")
    with pytest.raises(KeyError, match="class"):
        per_class_bar([{"label": "owl", "cIoU": 0.1}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no rows"):
        per_class_bar([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_grouped_bar(tmp_path):
    out = grouped_bar(
        ["rare", "common"],
        {"without": [0.2, 0.5], "with": [0.3, 0.5]},
        tmp_path / "g.png",
        errors={"without": [0.01, 0.02], "with": [0.03, 0.0]},
        ylabel="cIoU",
    )
    assert _png_size(out)[0] > 100
    with pytest.raises(ValueError, match="2 groups"):
        grouped_bar(["rare", "common"], {"a": [0.1]}, tmp_path / "h.png")


def test_image_grid_mixed_inputs(tmp_path):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (20, 40), dtype=np.uint8),
        rng.random((16, 16)) > 0.5,
        rng.random((24, 24, 3)).astype(np.float32),
    ]
    masks = [np.pad(np.ones((8, 8), bool), 12), None, None, np.zeros((24, 24), bool)]
    out = image_grid(images, tmp_path / "grid.png", titles=list("abcd"), masks=masks, ncols=2)
    w, h = _png_size(out)
    # Two columns of 1.6-inch cells and two rows of 1.85-inch (title included) at 100 dpi: more
    # than one cell each way, at most the whole figure once the margins are cropped.
    assert 160 < w <= 320 and 185 < h <= 370, (w, h)
    _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="titles"):
        image_grid(images, tmp_path / "bad.png", titles=["a"])
    with pytest.raises(TypeError, match="image 0"):
        image_grid([np.zeros((4, 4), np.int64)], tmp_path / "bad.png")


def test_prediction_grid(tmp_path):
    rng = np.random.default_rng(1)
    gt = np.zeros((32, 32), bool)
    gt[8:20, 10:24] = True
    pred = (gt * 200 + rng.integers(0, 40, gt.shape)).astype(np.uint8)
    items = [
        {
            "image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "gt": gt,
            "pred": pred,
            "gt_class": "snow leopard",
            "pred_class": name,
            "title": f"000{i}_snow leopard",
        }
        for i, name in enumerate(["snow leopard", "owl", "snow leopard"])
    ]
    out = prediction_grid(items, tmp_path / "pred.png", per_row=2)
    assert _png_size(out)[0] > 100
    bad = dict(items[0], pred=pred[:16])
    with pytest.raises(ValueError, match="differ in size"):
        prediction_grid([bad], tmp_path / "bad.png")
    with pytest.raises(KeyError, match="pred_class"):
        prediction_grid([{k: v for k, v in items[0].items() if k != "pred_class"}], tmp_path / "b")
    assert not (tmp_path / "bad.png").exists()


def test_comparison_grid(tmp_path):
    rng = np.random.default_rng(2)
    gt = np.zeros((20, 30), bool)
    gt[5:15, 8:22] = True

    def item(classes):
        return {
            "image": rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
            "gt": gt,
            "gt_class": "owl",
            "title": "000001_owl",
            "preds": {
                run: {"pred": (gt * 180).astype(np.uint8), "pred_class": c}
                for run, c in classes.items()
            },
        }

    one = item({"without": "moth", "with": "owl"})
    out = comparison_grid([one, item({"without": "owl", "with": "owl"})], tmp_path / "c.png")
    w, h = _png_size(out)
    _, h_one = _png_size(comparison_grid([one], tmp_path / "c1.png"))
    assert w > 200 and h > h_one  # one row per sample
    with pytest.raises(KeyError, match="runs"):
        comparison_grid([one, item({"with": "owl"})], tmp_path / "bad.png")
    small = item({"with": "owl"})
    small["preds"]["with"]["pred"] = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="differ in size"):
        comparison_grid([small], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
