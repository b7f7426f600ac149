"""``logger=wandb`` with the real wandb in offline mode: what a training run and a loop write.

The offline run file (``run-<id>.wandb``) is read back record by record, so the tests see what
``wandb sync`` would upload: the run's group and job type, the logged keys, the artifacts.
"""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from _engine_data import write_tiny_dataset
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_engine_resume import tiny_overrides

from ovcamo import CONF_DIR
from ovcamo.engine.loop import _log_report, loop_group, plan_stages, training_config
from ovcamo.engine.train import run
from ovcamo.metrics.tables import PER_CLASS_COLUMNS
from ovcamo.report.loop_report import RunFiles

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

BLOCK = 32768  # the run file's block size; records carry a 7-byte header (crc, length, type)


def read_run_file(path: Path) -> list:
    """The protobuf records of a wandb run file (a block log: ``:W&B`` header, then records split
    into FULL / FIRST, MIDDLE…, LAST pieces)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block tail too short for a header: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run(folder: Path, timeout: float = 60.0) -> tuple[Path, list]:
    """The run folder and records of the one offline run under ``folder``. wandb's writer process
    may still be flushing when ``finish()`` returns: read until the closing ``exit`` record."""
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = read_run_file(run_file)
        if of_type(records, "exit") or time.monotonic() > deadline:
            return run_file.parent, records
        time.sleep(0.2)


def of_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history_keys(records: list) -> set[str]:
    # A media value is logged as several items whose nested keys start with the logged key.
    return {i.key or i.nested_key[0] for h in of_type(records, "history") for i in h.item}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_training_logs_per_class_tables_and_predictions(offline, tmp_path):
    data = write_tiny_dataset(tmp_path / "data", size=32)
    overrides = [
        *tiny_overrides(data, tmp_path / "run"),
        "train.epochs=1",
        "train.val_every_epochs=1",
        "logger=wandb",
        "logger.group=g-1",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=overrides)
    run(cfg)
    folder, records = offline_run(tmp_path / "run")
    (info,) = of_type(records, "run")
    assert info.run_group == "g-1" and info.job_type == "train"
    assert {"val/cIoU", "val/per_class", "val/predictions"} <= history_keys(records)
    (table,) = (folder / "files" / "media" / "table" / "val").glob("per_class*.table.json")
    rows = json.loads(table.read_text())
    assert rows["columns"] == list(PER_CLASS_COLUMNS)
    assert sorted(r[0] for r in rows["data"]) == ["owl", "reccoon", "snow leopard"]
    assert list((folder / "files" / "media" / "images" / "val").glob("predictions*.png"))


def test_the_loop_logs_its_report_as_an_artifact_in_its_group(offline, tmp_path):
    out = tmp_path / "loop"
    out.mkdir()
    runs = {}
    for variant in ("without", "with"):
        score_dirs = {}
        for part in ("novel", "base_val"):
            d = tmp_path / variant / part
            d.mkdir(parents=True)
            with (d / "per_class.csv").open("w", newline="") as f:
                w = csv.writer(f)
                w.writerows(
                    [["class", "num_samples", "avgiou"], ["owl", 2, 0.5], ["frog", 1, 0.25]]
                )
            score_dirs[part] = d
        runs[variant] = [RunFiles(0, score_dirs["novel"], score_dirs["base_val"], out, out)]
    (out / "report.md").write_text("# report\n")
    (out / "loop.json").write_text("{}")
    (out / "pred_novel.png").write_bytes(
        (Path(__file__).resolve().parents[1] / "docs" / "world_grid.png").read_bytes()
    )
    cfg = OmegaConf.create({"logger": {"name": "wandb", "mode": "offline", "project": "ovcamo"}})
    ctx = SimpleNamespace(cfg=cfg, group="loop-abc")
    _log_report(ctx, SimpleNamespace(runs=runs), out, out / "report.md")

    _, records = offline_run(out)
    (info,) = of_type(records, "run")
    assert info.run_group == "loop-abc" and info.job_type == "loop-report"
    keys = history_keys(records)
    for variant in ("without", "with"):
        assert f"eval/{variant}/seed0/novel/per_class" in keys
        assert f"eval/{variant}/seed0/base_val/per_class" in keys
    assert "report/pred_novel" in keys
    reports = [a for a in of_type(records, "artifact") if a.type == "loop-report"]
    assert [a.name for a in reports] == ["loop-abc-report"]
    assert {e.path for e in reports[0].manifest.contents} == {
        "report.md",
        "loop.json",
        "pred_novel.png",
    }


def test_the_runs_of_one_loop_share_a_group(tmp_path):
    def loop_cfg(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("loop", overrides=["out_dir=unused", *overrides])

    cfg = loop_cfg()
    group = loop_group(cfg, plan_stages(cfg))
    assert group.startswith("loop-") and group == loop_group(loop_cfg(), plan_stages(loop_cfg()))
    other = loop_cfg("loop.seeds=[3]")
    assert loop_group(other, plan_stages(other)) != group
    named = loop_cfg("logger=wandb", "logger.group=mine")
    assert loop_group(named, plan_stages(named)) == "mine"
    for variant, seed in (("without", 0), ("with", 1)):
        tcfg = training_config(cfg, variant, seed, tmp_path, tmp_path, str(tmp_path), group)
        assert tcfg.logger.group == group and tcfg.logger.run_name == f"{variant}-seed{seed}"
