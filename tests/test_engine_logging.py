"""Run logging: metrics.jsonl always, wandb when asked (disabled mode here: no network, no files)."""

from __future__ import annotations

import math

import pytest

from ovcamo.data.mixing import OUTSIDE_OV_PROTOCOL
from ovcamo.engine.logging import RunLogger, read_metrics


def test_jsonl_lines_survive_a_torn_last_line(tmp_path):
    log = RunLogger(tmp_path, {"name": "jsonl"})
    log.log({"train/loss": 0.5, "val/cIoU": float("nan")}, step=1)
    log.log({"train/loss": 0.25}, step=2)
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/lo')  # a kill mid-write
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [x["step"] for x in lines] == [1, 2]
    assert lines[0]["train/loss"] == 0.5 and lines[0]["val/cIoU"] == "nan"
    assert not any("outside_ov_protocol" in x for x in lines)


def test_outside_protocol_banner_on_every_line_and_message(tmp_path, capsys):
    log = RunLogger(tmp_path, {"name": "jsonl"}, banner=OUTSIDE_OV_PROTOCOL)
    log.log({"a": 1}, step=1)
    log.info("epoch 1 done")
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["outside_ov_protocol"] is True
    assert "[OUTSIDE OV PROTOCOL] epoch 1 done" in capsys.readouterr().out


def test_none_writes_only_the_file_and_other_ranks_nothing(tmp_path, capsys):
    log = RunLogger(tmp_path / "a", {"name": "none"})
    log.log({"a": 1}, step=1)
    log.info("quiet")
    log.close()
    assert len(read_metrics(tmp_path / "a" / "metrics.jsonl")) == 1
    assert "quiet" not in capsys.readouterr().out
    other = RunLogger(tmp_path / "b", {"name": "jsonl"}, enabled=False)
    other.log({"a": 1}, step=1)
    other.close()
    assert not (tmp_path / "b").exists()


def test_wandb_logger_runs_in_disabled_mode(tmp_path):
    log = RunLogger(
        tmp_path, {"name": "wandb", "mode": "disabled", "project": "t"}, run_config={"x": 1}
    )
    log.log({"train/loss": math.pi}, step=1)
    log.close()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["train/loss"] == pytest.approx(math.pi)


def test_unknown_logger_name(tmp_path):
    with pytest.raises(KeyError, match="tensorboard"):
        RunLogger(tmp_path, {"name": "tensorboard"})
