"""DDP on CPU (gloo): 2-process evaluation equals 1 process; 2-process training completes and resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _engine_data import write_tiny_dataset
from test_engine_resume import tiny_overrides

from ovcamo.checkpoint import load_state
from ovcamo.data import DataPaths, OVCamoDataset
from ovcamo.data.transforms import EvalTransform
from ovcamo.engine.distributed import DistInfo, init_distributed
from ovcamo.engine.predict import evaluate_model

CLASSES_UNEVEN = {"snow leopard": 1, "reccoon": 1, "owl": 1, "frog": 3, "crab": 2}


def _model(seed: int = 0):
    from ovcamo.models import build_model, model_config

    torch.manual_seed(seed)
    cfg = model_config(
        "baclip_micro", overrides=["backbone.pretrained=null", "backbone.image_size=32"]
    )
    return build_model(cfg).eval()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_rank(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    dataset = OVCamoDataset(
        DataPaths.from_paths_json(Path(data) / "paths.json"), "test", transform=EvalTransform(32)
    )
    metrics, metric, _ = evaluate_model(
        _model(), dataset, dataset.class_names, dist=dist, batch_size=2, progress=False
    )
    ids = sorted(r["unique_id"] for r in metric.per_sample())
    Path(out, f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "ids": ids}))
    torch.distributed.destroy_process_group()


def test_two_process_evaluation_equals_one_process(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", CLASSES_UNEVEN, size=32)
    dataset = OVCamoDataset(
        DataPaths.from_paths_json(data / "paths.json"), "test", transform=EvalTransform(32)
    )
    assert len(dataset) == 5  # uneven over 2 ranks: 3 + 2 samples
    single, metric, _ = evaluate_model(
        _model(),
        dataset,
        dataset.class_names,
        dist=DistInfo(0, 1, 0, torch.device("cpu")),
        batch_size=2,
        progress=False,
    )
    mp.spawn(_eval_rank, args=(2, _free_port(), str(data), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["ids"] == sorted(r.unique_id for r in dataset.records)
        assert got["metrics"] == pytest.approx(single, rel=0, abs=1e-12)


def _torchrun(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "ovcamo",
            "train",
            *args,
        ],
        env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill below reaches every rank
    )


@pytest.mark.slow
def test_two_process_training_completes_and_resumes_after_kill(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", size=32)
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(data, run_dir), "train.ckpt_every_steps=1", "train.batch_size=4"]
    proc = _torchrun(args)
    state = run_dir / "checkpoints" / "last" / "state.pt"
    deadline = time.monotonic() + 300
    while not (state.is_file() and load_state(state)["step"] >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = load_state(state)
    assert killed["step"] < 6 and len(killed["rng"]) == 2 and killed["world_size"] == 2

    proc = _torchrun([*args, "resume=true"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    final = load_state(state)
    # 12 train samples, global batch 4 = 2 per rank: 3 steps per epoch, 2 epochs.
    assert final["step"] == 6 and final["epoch"] == 2
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["world_size"] == 2 and "cIoU" in info["result"]["val_metrics"]
    assert info["global_batch"] == 4 and info["batch_per_process"] == 2
