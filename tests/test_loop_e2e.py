"""``ovcamo-loop`` end to end on a tiny world: killed mid-way, resumed, report complete, then cached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

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
    novel = read_metrics(info["outputs"]["eval/with/seed0"]["novel"])
    assert 0.0 <= novel["cIoU"] <= 1.0 and novel["cIoU"] == novel["avgiou"]
    assert "oracle gain (real − without)" in text and "baseline: colour contrast" in text
    rare = info["outputs"]["eval/real/seed0"]["rare_eval"]
    assert read_metrics(rare)["cIoU"] >= 0.0

    # A third run finds every stage finished and only rewrites the report.
    cfg.out_dir = str(tmp_path / "warm")
    main(cfg)
    warm = json.loads((tmp_path / "warm" / "loop.json").read_text())
    assert {s["status"] for s in warm["stages"] if s["name"] != "report"} == {"cached"}
    assert (tmp_path / "warm" / "report.md").read_text().count("| cached |") == len(status) - 1
