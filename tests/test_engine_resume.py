"""Exact resume: a run SIGKILLed mid-epoch and restarted with resume=true ends bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _engine_data import TEST_CLASSES, TRAIN_CLASSES, write_tiny_dataset

from ovcamo import CONF_DIR
from ovcamo.checkpoint import load_state, load_weights


def tiny_overrides(data: Path, out: Path) -> list[str]:
    """A few-second CPU training run on a tiny dataset with a random-weight micro BaCLIP."""
    return [
        "data=ovcamo",
        f"data.root={data}",
        f"data.train_image_dir={data}/train/image",
        f"data.train_mask_dir={data}/train/mask",
        f"data.test_image_dir={data}/test/image",
        f"data.test_mask_dir={data}/test/mask",
        "data.holdout_fraction=0.34",
        "backbone.pretrained=null",
        "backbone.image_size=32",
        "train.epochs=2",
        "train.batch_size=2",
        "train.val_every_epochs=2",
        "train.ckpt_every_steps=2",
        "train.log_every_steps=1",
        "train.progress=false",
        "logger=none",
        f"out_dir={out}",
    ]


def _env() -> dict[str, str]:
    # One thread in every run: the same reduction order, so CPU results compare bit for bit.
    return os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ovcamo", "train", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    # 18 batches per epoch (12 train samples per class after the holdout, batch 2): long enough
    # that a kill 0.3 s after the step-2 checkpoint still lands inside the first epoch.
    counts = {**dict.fromkeys(TRAIN_CLASSES, 18), **dict.fromkeys(TEST_CLASSES, 3)}
    data = write_tiny_dataset(tmp_path / "data", counts, size=32)
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    _finish(_train(tiny_overrides(data, ref_dir)))

    proc = _train(tiny_overrides(data, cut_dir))
    state = cut_dir / "checkpoints" / "last" / "state.pt"
    deadline = time.monotonic() + 240
    # Kill once the step-2 checkpoint exists and step 3 is under way.
    while time.monotonic() < deadline:
        if state.is_file() and load_state(state)["step"] >= 2:
            break
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_state(state)
    assert killed_at["epoch"] == 0 and 0 < killed_at["batch"] < 18, killed_at

    out = _finish(_train([*tiny_overrides(data, cut_dir), "resume=true"]))
    ref = load_weights(ref_dir / "checkpoints" / "last" / "model.safetensors")
    got = load_weights(cut_dir / "checkpoints" / "last" / "model.safetensors")
    assert ref.keys() == got.keys()
    differing = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differing, (
        f"{len(differing)} tensors differ after resume, e.g. {differing[:3]}\n{out}"
    )
    ref_state = load_state(ref_dir / "checkpoints" / "last" / "state.pt")
    got_state = load_state(cut_dir / "checkpoints" / "last" / "state.pt")
    assert got_state["step"] == ref_state["step"] == 36
    assert got_state["val_metrics"] == ref_state["val_metrics"]
    for k, v in ref_state["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], got_state["optimizer"]["state"][k]["exp_avg_sq"])


class _Crash(Exception):
    pass


def test_crash_then_resume_in_process_is_bit_identical(tmp_path, monkeypatch):
    """The fast twin of the SIGKILL test: a crash after step 5 (checkpoint of step 4, mid-epoch)."""
    from hydra import compose, initialize_config_dir

    from ovcamo.engine import train as engine
    from ovcamo.engine.logging import RunLogger

    data = write_tiny_dataset(tmp_path / "data", {"snow leopard": 2, "reccoon": 2, "owl": 2})
    conf = str(CONF_DIR)

    def cfg(out: Path, *extra: str):
        args = [*tiny_overrides(data, out), "data.holdout_fraction=0", "train.ckpt_every_steps=1"]
        with initialize_config_dir(config_dir=conf, version_base=None):
            return compose("train", overrides=[*args, *extra])

    engine.run(cfg(tmp_path / "ref"))
    original = RunLogger.log

    def crash_at_step_5(self, values, step):
        if step == 5:
            raise _Crash
        original(self, values, step)

    monkeypatch.setattr(RunLogger, "log", crash_at_step_5)
    with pytest.raises(_Crash):
        engine.run(cfg(tmp_path / "cut"))
    state = load_state(tmp_path / "cut" / "checkpoints" / "last" / "state.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 4)
    monkeypatch.setattr(RunLogger, "log", original)
    engine.run(cfg(tmp_path / "cut", "resume=true"))
    ref = load_weights(tmp_path / "ref" / "checkpoints" / "last" / "model.safetensors")
    got = load_weights(tmp_path / "cut" / "checkpoints" / "last" / "model.safetensors")
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []
