"""``ovcamo-loop`` end to end on a tiny world: killed mid-way, resumed, report complete, then cached."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from ovcamo.cli import CONF_DIR
from ovcamo.engine.loop import main
from ovcamo.engine.stage_cache import MARKER
from ovcamo.report.loop_report import read_metrics

TINY = [
    "data.world.image_size=64",
    "data.world.classes.train=[mantis,owl,snake]",
    "data.world.classes.test=[butterfly,moth]",
    "data.world.train_counts.min=6",
    "data.world.train_counts.max=16",
    "data.world.test_count=4",
    "data.world.salient_per_class=8",
    "data.world.salient_heldout_per_class=4",
    "data.world.camouflaged_web_per_class=2",
    "clip.epochs=1",
    "clip.batch_size=16",
    "clip.progress=false",
    "backbone.image_size=64",
    "train.epochs=1",
    "train.max_steps=3",
    "train.progress=false",
    "loop.seeds=[0]",
    "loop.rare_eval.per_class=4",
    "loop.generate.progress=false",
    "loop.report.grid_samples=4",
    "loop.report.prediction_samples=2",
]

SECTIONS = (
    "## Novel classes (official OVCOS protocol)",
    "## Base validation: rare vs common classes",
    "## Masks and classes apart (diagnostics, not the official protocol)",
    "## Rare base classes: did the synthetic set help?",
    "## Did the synthetic set help?",
    "## Planner",
    "## Synthetic samples",
    "## Predictions",
    "## Wall time per stage",
)


def _markers(cache: Path) -> dict[str, str]:
    """``stage name -> key`` of every finished stage under the loop cache."""
    out = {}
    for marker in (cache / "loop").glob(f"*/*/{MARKER}"):
        done = json.loads(marker.read_text())
        out[done["name"]] = done["key"]
    return out


def _kill_after_first_training(cache: Path, out_dir: Path) -> dict[str, str]:
    """Run the loop in a subprocess and SIGKILL it once the first training stage has finished."""
    env = dict(os.environ, OVCAMO_CACHE=str(cache))
    args = [
        sys.executable,
        "-c",
        "from ovcamo.cli import loop; loop()",
        f"out_dir={out_dir}",
        f"hydra.run.dir={out_dir}/hydra",
        *TINY,
        # One process: a SIGKILL must not leave training workers behind (the resumed run below
        # trains in the default two worker processes).
        "loop.workers=1",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while "train/without/seed0" not in _markers(cache):
            if proc.poll() is not None:
                pytest.fail(f"loop exited early ({proc.returncode}): {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the first training stage did not finish in 10 minutes")
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return _markers(cache)


def _per_sample(directory: str) -> list[dict[str, str]]:
    with (Path(directory) / "per_sample.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _t_interval(runs: dict[str, np.ndarray]) -> dict[str, float]:
    """The report's oracle gain (real − without) and its 95 % Student-t interval over paired
    seeds, redone from per-sample scores ``(seeds, samples)``: each seed's mean difference, then
    scipy's t on ``seeds − 1`` degrees of freedom; NaN bounds with one seed."""
    d = (runs["real"] - runs["without"]).mean(axis=1)
    if len(d) < 2:
        return {"value": d.mean(), "low": np.nan, "high": np.nan}
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    return {"value": d.mean(), "low": low, "high": high}


def _check_rare_claims(outputs: dict, text: str) -> None:
    """What the report says about the rare classes, checked against the stages' own files: the
    oracle gain and its interval recomputed from the per-sample scores, the `real` set holding as
    many samples of each class as planned for the generator, and the arms' training configs
    differing only in the synthetic set."""
    for label, column in (("cIoU", "avgiou"), ("IoU, class check off", "agnostic_IoU")):
        tables = {
            arm: {
                r["unique_id"]: float(r[column])
                for r in _per_sample(outputs[f"eval/{arm}/seed0"]["rare_eval"])
            }
            for arm in ("without", "real")
        }
        assert set(tables["without"]) == set(tables["real"]) and len(tables["real"]) == 4 * len(
            outputs["rare_eval"]["classes"]
        )
        ids = sorted(tables["real"])
        runs = {arm: np.array([[t[i] for i in ids]]) for arm, t in tables.items()}
        g = _t_interval(runs)
        if np.isnan(g["low"]):
            cell = f"{g['value']:+.3f} (no interval: {len(runs['real'])} seed)"
        else:
            cell = f"{g['value']:+.3f} (95 % CI {g['low']:+.3f} to {g['high']:+.3f})"
        assert f"| {label} | {cell} |" in text, (label, cell)
        if label == "cIoU":
            short = "The oracle gain's interval includes 0: in this world the rare classes are not"
            assert (short in text) == bool(g["low"] <= 0 <= g["high"]), (g, text)
            alone = "there is no interval, so no verdict"
            assert (alone in text) == bool(np.isnan(g["low"])), (g, text)

    plan = json.loads((Path(outputs["generate"]["set_dir"]) / "plan.json").read_text())
    planned = Counter(item["class_name"] for item in plan["items"])
    real_set = Path(outputs["real_extra"]["set_dir"])
    extra = Counter(
        s["base_class"] for s in json.loads((real_set / "sample_info.json").read_text())
    )
    assert extra == planned and sum(planned.values()) > 0, (extra, planned)

    def flat(node: object, prefix: str = "") -> dict[str, object]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    def config(arm: str) -> dict[str, object]:
        run_dir = Path(outputs[f"train/{arm}/seed0"]["run_dir"])
        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
        return {k.rstrip("."): v for k, v in flat(cfg).items() if str(run_dir) not in str(v)}

    without, real = config("without"), config("real")
    differ = {k for k in without.keys() | real.keys() if without.get(k) != real.get(k)}
    # The run's name in the logger is the arm's label, not a setting.
    assert differ <= {"data.synthetic", "data.synthetic_ratio", "logger.run_name"}, differ
    assert "data.synthetic" in differ


@pytest.mark.slow
def test_loop_killed_resumed_and_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("OVCAMO_CACHE", str(cache))
    done_before = _kill_after_first_training(cache, tmp_path / "killed")
    assert {"data", "micro_clip", "generate", "real_extra", "rare_eval", "baseline"} <= set(
        done_before
    )
    assert "train/without/seed0" in done_before
    assert not (tmp_path / "killed" / "report.md").exists()

    with initialize_config_dir(CONF_DIR, version_base=None):
        cfg = compose("loop", overrides=[f"out_dir={tmp_path / 'resumed'}", *TINY])
    report = main(cfg)
    info = json.loads((tmp_path / "resumed" / "loop.json").read_text())
    status = {s["name"]: s["status"] for s in info["stages"]}
    for name in done_before:
        assert status[name] == "cached", name
    assert {n for n, s in status.items() if s == "ran"} == set(status) - set(done_before)
    assert status["eval/with/seed0"] == "ran" and status["eval/real/seed0"] == "ran"

    text = report.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "| Δ (with − without) |" in text
    assert "with a single seed there is no spread" in text
    for png in ("synthetic_grid.png", "base_val_rare_common.png", "pred_novel.png"):
        assert (tmp_path / "resumed" / png).stat().st_size > 1000, png
    novel_dir = info["outputs"]["eval/with/seed0"]["novel"]
    novel = read_metrics(novel_dir)
    rows = _per_sample(novel_dir)
    assert novel["cIoU"] == novel["avgiou"]
    assert novel["cIoU"] == pytest.approx(np.mean([float(r["avgiou"]) for r in rows]), abs=1e-9)
    assert f"| with | 0 | {novel['cSm']:.3f} |" in text
    assert "oracle gain (real − without)" in text and "baseline: colour contrast" in text
    _check_rare_claims(info["outputs"], text)

    # A third run finds every stage finished and only rewrites the report.
    cfg.out_dir = str(tmp_path / "warm")
    main(cfg)
    warm = json.loads((tmp_path / "warm" / "loop.json").read_text())
    assert {s["status"] for s in warm["stages"] if s["name"] != "report"} == {"cached"}
    assert (tmp_path / "warm" / "report.md").read_text().count("| cached |") == len(status) - 1
