"""The sweep summary: one row per job and run, only the overrides that differ between jobs."""

from __future__ import annotations

import pytest

from ovcamo.data.io import atomic_write_json, atomic_write_text
from ovcamo.report.sweep import write_sweep_summary
from ovcamo.report.tables import SIX_METRICS


def _job(sweep, num, overrides, values):
    job = sweep / str(num)
    outputs = {}
    for (variant, seed), v in values.items():
        novel = job / f"{variant}{seed}"
        atomic_write_json(novel / "metrics.json", {"metrics": dict.fromkeys(SIX_METRICS, v)})
        outputs[f"eval/{variant}/seed{seed}"] = {"novel": str(novel)}
        outputs[f"train/{variant}/seed{seed}"] = {"best_checkpoint": "x"}
    atomic_write_text(job / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in overrides))
    atomic_write_json(job / "loop.json", {"outputs": outputs})


def test_sweep_summary(tmp_path):
    common = "loop.seeds=[0,1]"
    _job(
        tmp_path,
        0,
        [common, "generator=classic"],
        {("with", 0): 0.3, ("with", 1): 0.5, ("without", 0): 0.2, ("without", 1): 0.2},
    )
    _job(
        tmp_path,
        1,
        [common, "generator=lakered_micro"],
        {("with", 0): 0.4, ("with", 1): 0.4, ("without", 0): 0.2, ("without", 1): 0.2},
    )
    (tmp_path / "2").mkdir()  # a job killed before its report: no loop.json, no row
    lines = write_sweep_summary(tmp_path).read_text().splitlines()
    rows = [line for line in lines if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert rows[0].startswith("| 0 | generator=classic | without | 2 | 0.200 ± 0.000")
    assert rows[1].startswith("| 0 | generator=classic | with | 2 | 0.400 ± 0.141")
    assert rows[3].startswith("| 1 | generator=lakered_micro | with | 2 | 0.400 ± 0.000")
    assert len(rows) == 4 and common not in "\n".join(lines)


def test_sweep_summary_needs_finished_jobs(tmp_path):
    with pytest.raises(FileNotFoundError, match="loop.json"):
        write_sweep_summary(tmp_path)
