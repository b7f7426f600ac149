"""The default loop's models reach a floor below the targets, so a regression shows in CI.

The default micro-world, micro CLIP and micro BaCLIP, trained as ``ovcamo-loop`` trains them, for
one seed and the arm without synthetic data (the three arms' machinery is covered on a tiny world
by ``test_loop_e2e.py``). The measured numbers of the full default loop are in the README and in
``docs/loop/report.md``; these floors sit below them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovcamo.report.loop_report import read_diagnostics

#: Floors: class-agnostic IoU on the novel classes, its margin over the colour-contrast baseline,
#: and the micro CLIP's zero-shot top-1 on camouflaged crops of the novel classes.
FLOOR_IOU = 0.50
FLOOR_MARGIN = 0.10
FLOOR_CLIP_CAMOUFLAGED = 0.40


@pytest.mark.slow
def test_default_models_segment_and_recognise(tmp_path):
    env = dict(os.environ, OVCAMO_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ovcamo",
            "loop",
            f"out_dir={tmp_path / 'out'}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            "loop.seeds=[0]",
            "loop.variants=[without]",
            "clip.progress=false",
            "train.progress=false",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "loop.json").read_text())
    outputs = info["outputs"]
    diagnostics = read_diagnostics(outputs["eval/without/seed0"]["novel"])
    baseline = outputs["baseline"]["novel"]["agnostic_IoU"]
    assert diagnostics["agnostic_IoU"] >= FLOOR_IOU, diagnostics
    assert diagnostics["agnostic_IoU"] - baseline >= FLOOR_MARGIN, (diagnostics, baseline)
    clip_dir = Path(outputs["micro_clip"]["checkpoint"]).parent
    clip = json.loads((clip_dir / "report.json").read_text(encoding="utf-8"))
    assert clip["zero_shot_top1_camouflaged"] >= FLOOR_CLIP_CAMOUFLAGED, clip
    report = (tmp_path / "out" / "report.md").read_text()
    assert "baseline: colour contrast to the border" in report
