"""The loop's configs: the two runs differ only in the synthetic data; experiments; check; sweeps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ovcamo.cli import CONF_DIR
from ovcamo.engine.loop import lane_slots, main, training_config


def _compose(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base=None):
        return compose("loop", overrides=["out_dir=unused", *overrides])


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def test_runs_differ_only_in_synthetic_data(tmp_path):
    cfg = _compose()
    runs = {
        v: OmegaConf.to_container(
            training_config(cfg, v, 0, tmp_path / v, tmp_path, str(tmp_path / "set")),
            resolve=False,
        )
        for v in ("without", "with")
    }
    a, b = (_flatten(runs[v]) for v in ("without", "with"))
    differing = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert differing == {"data.synthetic", "data.synthetic_ratio", "out_dir"}
    assert a["data.synthetic"] == [] and a["data.synthetic_ratio"] == 0.0
    assert b["data.synthetic"] == [str(tmp_path / "set")]
    assert b["data.synthetic_ratio"] == cfg.data.synthetic_ratio > 0
    # The training run gets neither the loop's own keys nor a check flag.
    assert not {"loop", "generator", "planner"} & set(runs["with"])
    assert runs["with"]["resume"] is True and runs["with"]["check"] is False
    # The loop scores base validation itself: the final-weights run does not validate too; a run
    # that keeps its best validated checkpoint still validates.
    assert cfg.train.select == "final" and cfg.train.val_every_epochs > 0
    assert runs["with"]["train"]["val_every_epochs"] == 0
    best = _compose("train.select=best")
    assert training_config(best, "without", 0, tmp_path, tmp_path).train.val_every_epochs == (
        best.train.val_every_epochs
    )


def test_paper_experiments_compose():
    base = _compose("experiment=paper_baseline")
    assert base.backbone.name == "convnext_large_d_320"
    assert base.backbone.image_size == 384
    assert base.model.name == "baclip" and base.model.sam_required
    # The paper's protocol: every base image trained on, the final weights scored.
    assert base.data.holdout_fraction == 0 and base.train.select == "final"
    assert base.train.epochs == 30 and base.train.lr == pytest.approx(3e-5)
    assert base.train.batch_size == 4
    assert "world" not in base.data and str(base.data.class_info).endswith("class_info.json")
    assert list(base.loop.variants) == ["without"]

    synthetic = _compose("experiment=paper_synthetic")
    assert synthetic.generator.name == "lakered"
    assert list(synthetic.loop.variants) == ["without", "with"]
    assert len(synthetic.loop.seeds) >= 2
    assert synthetic.model.name == "baclip" and synthetic.train.epochs == 30
    assert _compose("experiment=paper_synthetic", "generator=diffumatting").generator.name == (
        "diffumatting"
    )


def test_check_reports_every_missing_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OVCAMO_ROOT", str(tmp_path / "no-ovcamo"))
    cfg = _compose(
        "experiment=paper_synthetic",
        "check=true",
        f"model.sam_checkpoint={tmp_path / 'sam_vit_b.pth'}",
        f"generator.checkpoint={tmp_path / 'lakered'}",
        f"backbone.pretrained={tmp_path / 'clip.bin'}",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert "check failed" in out
    for name in ("class_info.json", "sam_vit_b.pth", "lakered", "clip.bin", "train/image"):
        assert name in out, name
    assert "train/with/seed1" in out  # the plan is printed before the problems
    assert not (tmp_path / "loop").exists()


def test_check_names_the_weights_lakered_trains_from(tmp_path):
    from ovcamo.engine.loop_check import check_generator

    assert check_generator(_compose("generator=lakered_micro").generator) == []
    missing = tmp_path / "ldm_init"
    cfg = _compose("generator=lakered_micro", f"generator.train.init_checkpoint={missing}")
    (problem,) = check_generator(cfg.generator)
    assert problem.where == "generator"
    assert problem.message.startswith(f"generator.train.init_checkpoint: {missing} does not exist")
    missing.mkdir()
    assert check_generator(cfg.generator) == []


def test_check_of_the_default_loop_computes_nothing(tmp_path, capsys):
    cache = tmp_path / "cache"
    cfg = _compose("check=true", f"cache_dir={cache}")
    assert main(cfg) is None
    out = capsys.readouterr().out
    assert out.count("check passed") == 1, out
    # data, CLIP, generation, real extra, rare-class set, baseline; 3 seeds × 3 arms × (train, eval)
    assert len(re.findall(r"to run", out)) == 6 + 3 * 3 * 2
    assert not cache.exists()


def test_a_last_partial_round_takes_the_leftover_lanes_with_it():
    assert lane_slots(9, 2) == [2] * 6 + [3] * 3
    assert lane_slots(6, 2) == [2] * 6
    assert lane_slots(7, 3) == [3] * 3 + [4] * 4
    assert lane_slots(8, 3) == [3] * 3 + [5] * 5
    assert lane_slots(5, 4) == [5] * 5
    assert lane_slots(3, 2) == [3] * 3


def _multirun(tmp_path: Path, *overrides: str) -> str:
    env = dict(os.environ, OVCAMO_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ovcamo.cli import loop; loop()",
            "-m",
            "check=true",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *overrides,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _keys(plan_text: str, stage: str) -> list[str]:
    return re.findall(rf"- {re.escape(stage)}\s+([0-9a-f]{{16}})", plan_text)


def test_multirun_sweep_shares_the_baseline(tmp_path):
    out = _multirun(tmp_path, "generator=classic,lakered_micro", "data.synthetic_ratio=0.1,0.3")
    # One loop check per job (each job's loop check also runs ovcamo-train's check on its baseline).
    assert out.count("check passed: data paths and weights files are in place") == 4
    assert len(set(_keys(out, "train/without/seed0"))) == 1  # trained once for the whole sweep
    assert len(set(_keys(out, "train/with/seed0"))) == 4
    assert len(set(_keys(out, "generate"))) == 2


def test_ablation_rows_are_a_multirun(tmp_path):
    out = _multirun(tmp_path, "experiment=ablation_micro")
    models = re.findall(r"model: (\S+)  backbone: (\S+)", out)
    assert models == [
        ("ladder_conv_micro", "ovcamo_micro_convnext"),
        ("ladder_sam_micro", "ovcamo_micro_convnext"),
        ("ladder_sam_cce_micro", "ovcamo_micro_convnext"),
        ("baclip_micro", "ovcamo_micro_convnext"),
        ("mrem_t2v_micro", "ovcamo_micro_convnext"),
        ("mrem_v2t_micro", "ovcamo_micro_convnext"),
        ("no_prompt_sa_micro", "ovcamo_micro_convnext"),
        *[("baclip_micro", "ovcamo_micro_convnext")] * 4,  # 1, 2, 4, 5 MFMSA blocks
        ("baclip_micro", "ovcamo_micro_convnext_b"),
        ("baclip_micro", "ovcamo_micro_vit"),
    ]
    # The rows share the world and the default micro CLIP; the backbone rows train their own.
    assert len(set(_keys(out, "data"))) == 1 and len(set(_keys(out, "micro_clip"))) == 3
    assert len(set(_keys(out, "train/without/seed0"))) == 13
    assert "generate" not in out
