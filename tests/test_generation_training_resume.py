"""Generator training resumes exactly: a tiny two-stage diffusion training SIGKILLed inside a
step and started again ends with the weights, and the loss history, of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovcamo.checkpoint import load_state, load_weights

JOB = Path(__file__).with_name("_gen_resume_job.py")
ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, str(JOB), str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_generator_training_resumes_bit_identical(tmp_path):
    whole = _run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _run(tmp_path / "resumed", "3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "resumed" / "final.safetensors").exists()
    # Killed inside step 3 of the second stage: its last checkpoint is after step 2.
    last = tmp_path / "resumed" / "checkpoints" / "second" / "last"
    assert load_state(last / "loop_state.pt")["step"] == 2
    resumed = _run(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_weights(tmp_path / "whole" / "final.safetensors")
    b = load_weights(tmp_path / "resumed" / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = load_state(tmp_path / "whole" / "history.pt")["history"]
    hb = load_state(tmp_path / "resumed" / "history.pt")["history"]
    assert ha == hb and len(ha) == 3 + 5
    rows = [json.loads(x) for x in (tmp_path / "whole" / "checkpoints" / "log.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3, 1, 2, 3, 4, 5]
    # Warm-up: the learning rate of step 1 is 0, of step 2 half the peak.
    assert rows[0]["lr"] == 0 and rows[1]["lr"] == pytest.approx(5e-4)
