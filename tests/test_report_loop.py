"""The loop's report on a small hand-made dataset, predictions scored by the real evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ovcamo.data import ClassInfo, DataPaths, SampleInfo, write_class_info, write_sample_info
from ovcamo.data.io import atomic_write_json, write_png
from ovcamo.engine.evaluate import score_prediction_dir, write_results
from ovcamo.report.loop_report import (
    LoopSummary,
    RunFiles,
    _rare_eval_section,
    group_means,
    read_metrics,
    read_per_class,
    write_loop_report,
)
from ovcamo.report.tables import Spread

CLASSES = [
    ClassInfo("owl", 1, "bird", (), "train", 4),
    ClassInfo("snow leopard", 2, "mammal", (), "train", 8),
    ClassInfo("moth", 3, "insect", (), "test", 3),
    ClassInfo("crab", 4, "crustacean", (), "test", 3),
]
SIZE = 24


def _square(rng: np.random.Generator) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), bool)
    y, x = rng.integers(2, 10, 2)
    m[y : y + 10, x : x + 12] = True
    return m


def _write_set(root: Path, samples: dict[str, list[str]], rng, split_of) -> dict[str, np.ndarray]:
    """Write an OVCamo-format folder; returns the GT mask of each unique_id."""
    paths = DataPaths(
        root / "class_info.json",
        root / "sample_info.json",
        root / "train/image",
        root / "train/mask",
        root / "test/image",
        root / "test/mask",
    )
    infos, masks, n = [], {}, 0
    for cls, uids in samples.items():
        split = split_of(cls)
        for uid in uids:
            mask = _square(rng)
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            write_png(paths.image_dir(split) / f"{uid}.png", image)
            write_png(paths.mask_dir(split) / f"{uid}.png", mask.astype(np.uint8) * 255)
            infos.append(SampleInfo(uid, cls, f"{uid}.png", f"{uid}.png", n))
            masks[uid] = mask
            n += 1
    write_class_info(paths.class_info, CLASSES)
    write_sample_info(paths.sample_info, infos)
    atomic_write_json(root / "paths.json", paths.to_json(relative_to=root))
    for d in ("train/image", "train/mask", "test/image", "test/mask"):
        (root / d).mkdir(parents=True, exist_ok=True)
    return masks


def _score(pred_dir: Path, data: DataPaths, split: str, out: Path) -> None:
    """Score ``[<class>]<uid>.png`` files as the loop does: the evaluator, then its result files."""
    write_results(score_prediction_dir(pred_dir, data, split=split, num_workers=1), out)


def _predict(out: Path, gts, classes, rng, quality: float, wrong: set[str]) -> Path:
    """Noisy predictions: ``quality`` mixes GT and noise; ids in ``wrong`` get a wrong class."""
    out.mkdir(parents=True)
    for uid, gt in gts.items():
        p = quality * gt + (1 - quality) * rng.random(gt.shape)
        name = "crab" if uid in wrong and classes[uid] != "crab" else classes[uid]
        if uid in wrong and classes[uid] == "crab":
            name = "moth"
        write_png(out / f"[{name}]{uid}.png", np.round(p * 255).astype(np.uint8))
    return out


@pytest.fixture
def finished_loop(tmp_path):
    rng = np.random.default_rng(0)
    train = {
        "owl": [f"{i:06d}_owl" for i in range(2)],
        "snow leopard": [f"{i:06d}_snow leopard" for i in range(2, 6)],
    }
    test = {
        "moth": [f"{i:06d}_moth" for i in range(6, 9)],
        "crab": [f"{i:06d}_crab" for i in range(9, 12)],
    }
    split_of = {c.name: c.split for c in CLASSES}.__getitem__
    gts = _write_set(tmp_path / "data", {**train, **test}, rng, split_of)
    data = DataPaths.from_paths_json(tmp_path / "data" / "paths.json")
    classes = {uid: c for c, uids in {**train, **test}.items() for uid in uids}
    test_gt = {u: gts[u] for c in test for u in test[c]}
    val_gt = {u: gts[u] for c in train for u in train[c]}

    runs: dict[str, list[RunFiles]] = {}
    for variant, quality in (("without", 0.5), ("with", 0.6)):
        for seed in (0, 1):
            d = tmp_path / "runs" / f"{variant}{seed}"
            wrong = {"000006_moth"} if seed == 0 else set()
            pn = _predict(d / "pred", test_gt, classes, rng, quality + 0.05 * seed, wrong)
            pv = _predict(d / "pred_val", val_gt, classes, rng, quality, set())
            _score(pn, data, "test", d / "novel")
            _score(pv, data, "train", d / "base_val")
            runs.setdefault(variant, []).append(RunFiles(seed, d / "novel", d / "base_val", pn, pv))

    synthetic = tmp_path / "synthetic"
    _write_set(synthetic, {"owl": ["syn_000000_owl", "syn_000001_owl"]}, rng, split_of)
    atomic_write_json(
        synthetic / "plan.json",
        {
            "generator": "classic",
            "rule": "quantile",
            "counts": {"owl": 2, "snow leopard": 4},
            "targets": {"owl": 4},
            "items": [{"class_name": "owl"}, {"class_name": "owl"}],
            "outside_ov_protocol": False,
        },
    )
    stages = [
        {"name": "data", "status": "cached", "seconds": 0.01, "compute_seconds": 2.0},
        {
            "name": "train/with/seed0",
            "status": "ran",
            "seconds": 31.5,
            "compute_seconds": 31.5,
            "cpu_seconds": 50.0,
        },
    ]
    summary = LoopSummary(
        data=data,
        runs=runs,
        stages=stages,
        meta={"generator": "classic", "synthetic_ratio": 0.25, "model": "baclip_micro"},
        synthetic_dir=synthetic,
        grid_samples=4,
        prediction_samples=2,
    )
    return summary, tmp_path / "report"


def test_loop_report_sections_and_numbers(finished_loop):
    summary, out = finished_loop
    report = write_loop_report(summary, out)
    text = report.read_text()
    for section in (
        "## Novel classes (official OVCOS protocol)",
        "## Base validation: rare vs common classes",
        "## Did the synthetic set help?",
        "## Planner",
        "## Synthetic samples",
        "## Predictions",
        "## Wall time per stage",
    ):
        assert section in text

    # The table's numbers are the scored files' numbers, mean ± std over the two seeds.
    novel = {n: [read_metrics(r.novel) for r in rs] for n, rs in summary.runs.items()}
    ciou_without = Spread.of([m["cIoU"] for m in novel["without"]]).format()
    assert f"| without | {Spread.of([m['cSm'] for m in novel['without']]).format()}" in text
    assert ciou_without in text
    diff = Spread.of(
        [t["cIoU"] - c["cIoU"] for t, c in zip(novel["with"], novel["without"], strict=True)]
    )
    assert diff.format(signed=True) in text

    # Rare = the planner's classes; the group table is a macro average over per-class rows.
    rows = read_per_class(summary.runs["with"][0].base_val)
    assert {r["class"] for r in rows} == {"owl", "snow leopard"}
    g = group_means(rows, {"owl"})
    assert g["rare"] == pytest.approx(next(r["avgiou"] for r in rows if r["class"] == "owl"))
    assert g["all"] == pytest.approx(np.mean([r["cIoU"] for r in rows]))
    assert (
        "| owl | 2 | rare | 4 | 2 | 2 |" in text
    )  # planner: count, rare, target, planned, written

    # Stage times: this run's seconds and the seconds when each stage was computed.
    assert "| train/with/seed0 | ran | 31.5 | 31.5 | 50.0 |" in text
    assert "| data | cached | 0.0 | 2.0 | n/a |" in text
    assert "| **total** |  | 31.5 | 33.5 | n/a |" in text
    for png in (
        "synthetic_grid.png",
        "base_val_rare_common.png",
        "base_val_per_class_with.png",
        "pred_novel.png",
        "pred_rare.png",
    ):
        assert (out / png).stat().st_size > 1000
    assert not list(out.glob("*.tmp"))


def test_loop_report_single_seed_and_single_run(finished_loop):
    summary, out = finished_loop
    summary.runs = {"without": summary.runs["without"][:1]}
    summary.synthetic_dir = None
    text = write_loop_report(summary, out).read_text()
    assert "## Did the synthetic set help?" not in text and "## Planner" not in text
    assert "Δ" not in text


def test_outside_protocol_is_said(finished_loop):
    summary, out = finished_loop
    plan = json.loads((summary.synthetic_dir / "plan.json").read_text())
    atomic_write_json(summary.synthetic_dir / "plan.json", plan | {"outside_ov_protocol": True})
    text = write_loop_report(summary, out).read_text()
    assert "outside the open-vocabulary protocol" in text


def test_missing_scores_name_the_file(finished_loop):
    summary, out = finished_loop
    (summary.runs["with"][1].novel / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_loop_report(summary, out)


def test_report_without_base_validation_says_why(finished_loop):
    """The paper's protocol holds nothing out: the report has novel classes and no base part."""
    summary, out = finished_loop
    for rs in summary.runs.values():
        for r in rs:
            r.base_val = r.pred_val = None
    text = write_loop_report(summary, out).read_text()
    assert "## Novel classes (official OVCOS protocol)" in text
    assert "## Base validation\n" in text and "data.holdout_fraction=0" in text
    assert "rare vs common" not in text and "base validation, rare" not in text
    assert "## Did the synthetic set help?" in text and "novel classes, cIoU" in text
    assert not (out / "base_val_rare_common.png").exists() and not (out / "pred_rare.png").exists()


def _rare_runs(tmp_path: Path, per_seed_gain: dict[str, list[float]]) -> dict[str, list[RunFiles]]:
    """Runs with only a rare-class ``per_sample.csv``: 4 samples per seed, every score of run
    ``arm`` on seed ``i`` = sample difficulty + ``per_seed_gain[arm][i]`` (the agnostic IoU 0.1
    higher)."""
    difficulty = [0.2, 0.4, 0.5, 0.7]
    runs: dict[str, list[RunFiles]] = {}
    for arm, gains in per_seed_gain.items():
        for seed, gain in enumerate(gains):
            d = tmp_path / arm / str(seed)
            d.mkdir(parents=True)
            lines = ["unique_id,avgiou,agnostic_IoU"]
            lines += [f"s{j},{v + gain},{v + gain + 0.1}" for j, v in enumerate(difficulty)]
            (d / "per_sample.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
            runs.setdefault(arm, []).append(RunFiles(seed, d, None, d, None, rare_eval=d))
    return runs


def _cell(d: np.ndarray) -> str:
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    return f"{d.mean():+.3f} (95 % CI {low:+.3f} to {high:+.3f})"


def test_rare_gains_have_student_t_intervals_over_paired_seeds(tmp_path):
    real, synthetic = [0.0115, 0.0191, 0.0072], [0.0085, 0.0164, 0.0001]
    runs = _rare_runs(tmp_path, {"without": [0, 0, 0], "with": synthetic, "real": real})
    text = _rare_eval_section(runs, {"generator": "classic"})
    oracle, with_ = _cell(np.array(real)), _cell(np.array(synthetic))
    assert oracle == "+0.013 (95 % CI -0.002 to +0.028)"
    share = "66% (no interval: unbounded, the denominator's interval holds 0)"
    for label in ("cIoU", "IoU, class check off"):  # the class check off shifts both arms alike
        assert f"| {label} | {oracle} | {with_} | {share} |" in text
    assert "95 % Student-t interval over 3 paired seeds (2 degrees of freedom" in text
    assert "The oracle gain's interval includes 0" in text


def test_rare_gains_verdict_and_share_interval(tmp_path):
    real, synthetic = [0.10, 0.12, 0.11], [0.05, 0.07, 0.05]
    runs = _rare_runs(tmp_path, {"without": [0.0, 0.01, 0.0], "with": synthetic, "real": real})
    text = _rare_eval_section(runs, {"generator": "classic"})
    x = np.array(synthetic) - [0.0, 0.01, 0.0]
    y = np.array(real) - [0.0, 0.01, 0.0]
    # Fieller's set: every r with |t statistic of mean(x − r y)| ≤ t(0.975, 2); its ends solve a
    # quadratic in r.
    t2, n = stats.t.ppf(0.975, 2) ** 2, 3
    c = np.cov(x, y) / n
    qa = y.mean() ** 2 - t2 * c[1, 1]
    qb = x.mean() * y.mean() - t2 * c[0, 1]
    qc = x.mean() ** 2 - t2 * c[0, 0]
    low, high = (qb - np.sqrt(qb**2 - qa * qc)) / qa, (qb + np.sqrt(qb**2 - qa * qc)) / qa
    share = f"{x.mean() / y.mean():.0%} (95 % CI {low:.0%} to {high:.0%})"
    assert f"| cIoU | {_cell(y)} | {_cell(x)} | {share} |" in text
    assert f"Yes: `classic` raised rare-class cIoU by {x.mean():+.3f}" in text


def test_rare_gains_with_one_seed_have_no_interval(tmp_path):
    runs = _rare_runs(tmp_path, {"without": [0.0], "with": [0.05], "real": [0.1]})
    text = _rare_eval_section(runs, {"generator": "classic"})
    assert "| cIoU | +0.100 (no interval: 1 seed) | +0.050 (no interval: 1 seed) | 50% (no " in text
    assert "With 1 seed there is no interval, so no verdict" in text
    assert "CI" not in text
