"""The confusion matrix of predicted vs GT class: counts on hand-made sets, its tables and heat
map, in ``ovcamo-eval``'s output and in the loop report's "Which classes are confused"."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from _engine_data import write_tiny_dataset
from PIL import Image

from ovcamo.cli import evaluate
from ovcamo.report.confusion import (
    confusion_csv,
    confusion_heatmap,
    confusion_markdown,
    confusion_matrix,
    top_confusions_markdown,
)
from ovcamo.report.loop_report import confused_classes_section

PAIRS = [  # (gt, predicted)
    ("frog", "frog"),
    ("frog", "crab"),
    ("frog", "owl"),
    ("frog", "crab"),
    ("crab", "crab"),
    ("crab", "frog"),
    ("moth", "moth"),
]


def test_counts_labels_and_top_confusions():
    conf = confusion_matrix(PAIRS, class_order=["owl", "crab", "frog", "bee"])
    # Classes of the order that occur, in its order, then the others sorted.
    assert conf.labels == ["owl", "crab", "frog", "moth"]
    expected = np.array(
        [
            [0, 0, 0, 0],  # owl is only ever predicted
            [0, 1, 1, 0],
            [1, 2, 1, 0],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_array_equal(conf.counts, expected)
    assert conf.total == 7 and conf.accuracy == 3 / 7
    assert conf.top_confusions(2) == [("frog", "crab", 2, 0.5), ("crab", "frog", 1, 0.5)]
    assert conf.top_confusions(10)[-1] == ("frog", "owl", 1, 0.25)

    both = conf + confusion_matrix([("bee", "frog"), ("frog", "crab")])
    assert both.labels == ["owl", "crab", "frog", "moth", "bee"]
    assert both.counts[2, 1] == 3 and both.counts[4, 2] == 1 and both.total == 9


def test_tables_and_heat_map(tmp_path):
    conf = confusion_matrix(PAIRS, class_order=["owl", "crab", "frog"])
    rows = list(csv.reader(confusion_csv(conf).splitlines()))
    assert rows[0] == ["gt \\ predicted", "owl", "crab", "frog", "moth"]
    assert rows[3] == ["frog", "1", "2", "1", "0"]
    md = confusion_markdown(conf).splitlines()
    assert md[0] == "| GT \\ predicted | owl | crab | frog | moth |"
    assert md[4] == "| frog | 1 | 2 | 1 | · |"
    top = top_confusions_markdown({"without": conf}, n=1)
    assert "| without | frog | crab | 2 | 50% |" in top
    path = confusion_heatmap(conf, tmp_path / "confusion.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100


def _hand_made_predictions(data: Path, pred_dir: Path, predicted: dict[str, str]) -> None:
    """``[<predicted>]<uid>.png`` with the GT mask as the map, for each test sample."""
    pred_dir.mkdir(parents=True)
    for uid, cls in predicted.items():
        shutil.copy(data / "test" / "mask" / f"{uid}.png", pred_dir / f"[{cls}]{uid}.png")


#: Test samples of write_tiny_dataset (frog and crab, three each) and the class each is given.
PREDICTED = {
    "000018_frog": "frog",
    "000019_frog": "crab",
    "000020_frog": "owl",
    "000021_crab": "crab",
    "000022_crab": "crab",
    "000023_crab": "frog",
}


def test_eval_writes_the_confusion_matrix(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", size=16)
    _hand_made_predictions(data, tmp_path / "pred", PREDICTED)
    out = tmp_path / "eval"
    evaluate(
        [
            f"data.root={data}",
            f"pred_dir={tmp_path / 'pred'}",
            f"out_dir={out}",
            "num_workers=1",
        ]
    )
    rows = list(csv.reader((out / "confusion.csv").read_text().splitlines()))
    # Dataset class order (owl id 2, frog 3, crab 4); owl appears as a prediction only.
    assert rows == [
        ["gt \\ predicted", "owl", "frog", "crab"],
        ["owl", "0", "0", "0"],
        ["frog", "1", "1", "1"],
        ["crab", "0", "1", "2"],
    ]
    assert "| crab | · | 1 | 2 |" in (out / "confusion.md").read_text()
    with Image.open(out / "confusion.png") as im:
        assert im.format == "PNG"


def test_loop_report_section_sums_seeds(tmp_path):
    """The section reads per_sample.csv of each arm's novel-split evaluation."""
    runs = {}
    for arm, seeds in (("without", [PREDICTED, PREDICTED]), ("with", [dict.fromkeys(PREDICTED)])):
        runs[arm] = []
        for i, predicted in enumerate(seeds):
            folder = tmp_path / arm / str(i)
            folder.mkdir(parents=True)
            lines = ["unique_id,gt_class,pred_class"]
            for uid, cls in predicted.items():
                gt = uid.split("_", 1)[1]
                lines.append(f"{uid},{gt},{cls or gt}")
            (folder / "per_sample.csv").write_text("\n".join(lines) + "\n")
            runs[arm].append(folder)
    text = confused_classes_section(runs, tmp_path / "report", class_order=["owl", "frog", "crab"])
    assert text.startswith("## Which classes are confused")
    # without: two seeds of the hand-made set, so every off-diagonal count doubles.
    assert "| without | frog | crab | 2 | 33% |" in text
    assert "| without | crab | frog | 2 | 33% |" in text
    assert "| with | — | — | 0 | — |" in text  # every class right
    assert "(confusion_without.png)" in text and "(confusion_with.png)" in text
    assert (tmp_path / "report" / "confusion_without.png").is_file()
