"""The sweep summary: one row per job and run, only the overrides that differ between jobs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t as student_t

from ovcamo.data.io import atomic_write_json, atomic_write_text
from ovcamo.report.sweep import write_sweep_summary
from ovcamo.report.tables import SIX_METRICS


def _job(sweep, num, overrides, values, diagnostics=None):
    job = sweep / str(num)
    outputs = {}
    for (variant, seed), v in values.items():
        novel = job / f"{variant}{seed}"
        scores = {"metrics": dict.fromkeys(SIX_METRICS, v)}
        if diagnostics is not None:
            scores["diagnostics"] = {"note": "not the official protocol", **diagnostics(v)}
        atomic_write_json(novel / "metrics.json", scores)
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


def _ablation_job(sweep, num, group, row, values, diagnostics=None):
    _job(
        sweep,
        num,
        [f"{group}={row}"],
        {("without", s): v for s, v in enumerate(values)},
        diagnostics,
    )
    atomic_write_text(
        sweep / str(num) / ".hydra" / "hydra.yaml",
        f"hydra:\n  runtime:\n    choices:\n      {group}: {row}\n      model: baclip_micro\n",
    )


def test_ablation_summary_puts_the_papers_numbers_beside_each_row(tmp_path):
    group = "ablation_row_micro"
    _ablation_job(
        tmp_path,
        0,
        group,
        "full",
        [0.30, 0.34],
        lambda v: {"agnostic_IoU": v + 0.2, "class_accuracy": 0.7, "agnostic_Sm": 0.5},
    )
    _ablation_job(tmp_path, 1, group, "conv", [0.10, 0.12])
    _ablation_job(tmp_path, 2, group, "mfmsa_4", [0.2, 0.2])
    text = write_sweep_summary(tmp_path).read_text()
    table = text.split("## Ablation rows", 1)[1].split("## Every job", 1)[0]
    rows = [line for line in table.splitlines() if "`" in line and line.startswith("| ")]
    # The paper's row order, whatever the job order; mean ± std over the seeds of each row.
    assert [r.split("`")[1] for r in rows] == ["conv", "full", "mfmsa_4"]
    # conv − full on each seed: 0.10 − 0.30, 0.12 − 0.34; Student t on 1 degree of freedom.
    d = np.array([0.10 - 0.30, 0.12 - 0.34])
    half = student_t.ppf(0.975, 1) * d.std(ddof=1) / np.sqrt(2)
    ci = f"{d.mean():+.3f} (95 % CI {d.mean() - half:+.3f} to {d.mean() + half:+.3f}), n=2"
    assert ci == "-0.210 (95 % CI -0.337 to -0.083), n=2"
    assert rows[0] == (
        "| CLIP + conv decoder (baseline) (`conv`) | 2 | 0.110 ± 0.014 | 0.110 ± 0.014 | — | — "
        f"| 0.528 | 0.311 | {ci} |"
    )
    # The diagnostics beside the official numbers, where the runs' scores hold them.
    assert rows[1].endswith(
        "| 2 | 0.320 ± 0.028 | 0.320 ± 0.028 | 0.520 ± 0.028 | 0.700 ± 0.000 | 0.589 | 0.488 "
        "| reference |"
    )
    assert "IoU, class check off" in table and "outside the official protocol" in table
    assert "95 % Student-t interval over those n paired seeds" in table
    # mfmsa_4 ran the same two seeds: 0.2 − 0.30, 0.2 − 0.34.
    d = np.array([0.2 - 0.30, 0.2 - 0.34])
    half = student_t.ppf(0.975, 1) * d.std(ddof=1) / np.sqrt(2)
    assert rows[2].endswith(
        "| n/a (not in the paper) | n/a (not in the paper) "
        f"| {d.mean():+.3f} (95 % CI {d.mean() - half:+.3f} to {d.mean() + half:+.3f}), n=2 |"
    )
    assert "is 9.6 points (29 % relative)" in text
    assert "OVCoser (OVCamo's baseline): cSm 0.579, cIoU 0.443" in text
    assert "## Every job" in text  # the per-job table follows


def test_rows_are_paired_with_full_on_the_seeds_both_ran(tmp_path):
    """Seeds pair by number, not by position; one common seed gives no interval."""
    group = "ablation_row_micro"
    _ablation_job(tmp_path, 0, group, "full", [0.30, 0.34, 0.31])
    _job(tmp_path, 1, [f"{group}=sam"], {("without", 2): 0.25, ("without", 7): 0.9})
    atomic_write_text(
        tmp_path / "1" / ".hydra" / "hydra.yaml",
        f"hydra:\n  runtime:\n    choices:\n      {group}: sam\n",
    )
    _ablation_job(
        tmp_path, 2, group, "conv", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.0]
    )
    table = write_sweep_summary(tmp_path).read_text().split("## Every job", 1)[0]
    rows = {
        line.split("`")[1]: line
        for line in table.splitlines()
        if line.startswith("| ") and "`" in line
    }
    # sam ran seeds 2 and 7, full 0..2: only seed 2 pairs (0.25 − 0.31).
    assert rows["sam"].endswith("| -0.060 (no interval: 1 seed), n=1 |")
    # conv ran seeds 0..10: seeds 0, 1, 2 pair; seed 10 (sorted after 2 as text) does not.
    d = np.array([0.1 - 0.30, 0.2 - 0.34, 0.3 - 0.31])
    half = student_t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert rows["conv"].endswith(
        f"| {d.mean():+.3f} (95 % CI {d.mean() - half:+.3f} to {d.mean() + half:+.3f}), n=3 |"
    )


def test_a_sweep_without_ablation_rows_has_no_ablation_table(tmp_path):
    _job(tmp_path, 0, ["generator=classic"], {("without", 0): 0.2})
    assert "## Ablation rows" not in write_sweep_summary(tmp_path).read_text()


def test_other_overrides_swept_with_a_row_are_rows_of_their_own(tmp_path):
    """A design-choice sweep (one row, several prompt modes) keeps the modes apart."""
    group = "ablation_row_micro"
    for num, (mode, v) in enumerate((("weighted", 0.3), ("topk", 0.2))):
        _ablation_job(tmp_path, num, group, "full", [v])
        overrides = tmp_path / str(num) / ".hydra" / "overrides.yaml"
        atomic_write_text(overrides, f"- {group}=full\n- model.prompt.mode={mode}\n")
    table = write_sweep_summary(tmp_path).read_text().split("## Every job", 1)[0]
    rows = [line for line in table.splitlines() if "`full`" in line and line.startswith("| ")]
    assert len(rows) == 2
    # Neither is the plain `full` row, so there is nothing to compare them with.
    assert "model.prompt.mode=topk | 1 | 0.200 | 0.200 | — | — |  |  | — (no full row) |" in rows[0]
    assert "model.prompt.mode=weighted | 1 | 0.300 | 0.300 | — | — |  |  | — (no full" in rows[1]


def test_rows_run_in_several_sweeps_with_other_seeds_stay_one_row(tmp_path):
    group = "ablation_row_micro"
    _ablation_job(tmp_path, 0, group, "conv", [0.1, 0.2, 0.3])
    _ablation_job(tmp_path, 1, group, "sam", [0.2, 0.4])
    for num, seeds in ((0, "[0,1,2]"), (1, "[0,1]")):
        atomic_write_text(
            tmp_path / str(num) / ".hydra" / "overrides.yaml",
            f"- {group}={'conv' if num == 0 else 'sam'}\n- loop.seeds={seeds}\n"
            f"- loop.workers={3 - num}\n",
        )
    table = write_sweep_summary(tmp_path).read_text().split("## Every job", 1)[0]
    rows = [line for line in table.splitlines() if "`" in line and line.startswith("| ")]
    assert rows[0].startswith("| CLIP + conv decoder (baseline) (`conv`) | 3 | 0.200 ± 0.100 |")
    assert rows[1].startswith("| + SAM decoder (`sam`) | 2 | 0.300 ± 0.141 |")
    assert "loop.seeds" not in table
