"""The ablation sweeps: every row of the paper's tables, at paper and at micro scale, composing what
it names; the micro backbones build and train; a tiny real sweep writes the rows' table."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_loop_e2e import TINY

from ovcamo import CONF_DIR
from ovcamo.engine.check import preflight_problems
from ovcamo.models import build_model, model_config
from ovcamo.report.sweep import NOT_FOUND, PAPER_ABLATION

ROWS = list(PAPER_ABLATION)


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("loop", overrides=["out_dir=unused", *overrides], return_hydra_config=True)


def test_every_paper_row_is_swept_at_both_scales():
    assert len(ROWS) == 13 and {"conv", "full", "mfmsa_5", "vit_l14"} <= set(ROWS)
    for experiment, group in (
        ("ablation", "ablation_row"),
        ("ablation_micro", "ablation_row_micro"),
    ):
        assert sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) == sorted(ROWS)
        swept = _compose(f"experiment={experiment}").hydra.sweeper.params[group]
        assert swept.split(",") == ROWS, experiment


def test_paper_numbers_are_the_papers_tables():
    """Tab. 3 (ladder), Tab. 5 (MREM, prompt self-attention), the backbone comparison; no number
    where the paper gives none."""
    numbers = {row: (p.cSm, p.cIoU) for row, p in PAPER_ABLATION.items()}
    assert numbers == {
        "conv": (0.528, 0.311),
        "sam": (0.531, 0.332),
        "sam_cce": (0.555, 0.428),
        "full": (0.589, 0.488),
        "mrem_t2v": (0.559, 0.432),
        "mrem_v2t": (0.574, 0.462),
        "no_prompt_sa": (0.580, 0.470),
        "mfmsa_1": (None, None),
        "mfmsa_2": (None, None),
        "mfmsa_4": (None, None),
        "mfmsa_5": (None, None),
        "convnext_b": (None, None),
        "vit_l14": (None, 0.458),
    }


EXPECTED = {  # row: (model, MFMSA blocks, paper backbone, micro backbone)
    "conv": ("ladder_conv", 0, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "sam": ("ladder_sam", 0, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "sam_cce": ("ladder_sam_cce", 3, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "full": ("baclip", 3, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "mrem_t2v": ("mrem_t2v", 3, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "mrem_v2t": ("mrem_v2t", 3, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "no_prompt_sa": ("no_prompt_sa", 3, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "mfmsa_1": ("baclip", 1, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "mfmsa_2": ("baclip", 2, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "mfmsa_4": ("baclip", 4, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "mfmsa_5": ("baclip", 5, "convnext_large_d_320", "ovcamo_micro_convnext"),
    "convnext_b": ("baclip", 3, "convnext_base", "ovcamo_micro_convnext_b"),
    "vit_l14": ("baclip", 3, "ViT-L-14-336-quickgelu", "ovcamo_micro_vit"),
}


@pytest.mark.parametrize("row", ROWS)
def test_each_row_composes_what_it_names(row, monkeypatch, tmp_path):
    model, blocks, paper_backbone, micro_backbone = EXPECTED[row]
    sam = tmp_path / "sam.pth"
    sam.write_bytes(b"")
    monkeypatch.setenv("SAM_CHECKPOINT", str(sam))
    paper = _compose("experiment=ablation", f"ablation_row={row}")
    assert paper.model.name == model and paper.model.cce.num_blocks == blocks
    assert paper.backbone.name == paper_backbone == paper.model.backbone.name
    assert paper.model.sam_required and paper.data.holdout_fraction == 0
    assert list(paper.loop.variants) == ["without"]
    micro = _compose("experiment=ablation_micro", f"ablation_row_micro={row}")
    assert micro.model.name == f"{model}_micro" and micro.model.cce.num_blocks == blocks
    assert micro.backbone.name == micro_backbone == micro.clip.model  # its own micro CLIP
    assert micro.model.sam_checkpoint is None and list(micro.loop.variants) == ["without"]
    assert preflight_problems(micro) == [] and preflight_problems(paper) == []


def test_a_mismatched_micro_clip_is_a_problem():
    cfg = _compose("backbone=micro_vit")
    (problem,) = preflight_problems(cfg)
    assert problem.where == "clip.model"
    assert "clip.model='ovcamo_micro_convnext'" in problem.message
    assert "clip=micro_vit" in problem.message


@pytest.mark.parametrize("backbone", ["micro_convnext_b", "micro_vit"])
def test_micro_backbone_rows_build_and_train(backbone, caplog):
    caplog.set_level(logging.ERROR)
    torch.manual_seed(0)
    model = build_model(
        model_config(
            "baclip_micro", backbone, ["backbone.pretrained=null", "backbone.image_size=64"]
        )
    )
    assert model.backbone.is_vit == (backbone == "micro_vit")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = model(images, ["owl", "frog", "moth"])
    assert out["mask_logits"].shape == (2, 1, 64, 64) and out["class_logits"].shape == (2, 3)
    model.loss(out, (images[:, :1] > 0.5).float())["loss"].backward()
    assert all(p.grad is not None for p in model.trainable_parameters())


@pytest.mark.slow
def test_tiny_ablation_sweep_writes_the_rows_table(tmp_path):
    """Two rows of experiment=ablation_micro for real on a tiny world (one trains a micro ViT
    CLIP): the sweep's summary lists them beside the paper's numbers."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ovcamo.cli import loop; loop()",
            "-m",
            "experiment=ablation_micro",
            "ablation_row_micro=vit_l14,full",
            f"hydra.sweep.dir={sweep}",
            *TINY,
        ],
        env=dict(os.environ, OVCAMO_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (sweep / "sweep.md").read_text()
    table = text.split("## Ablation rows", 1)[1].split("## Every job", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert [line.split("`")[1] for line in rows] == ["full", "vit_l14"]  # the paper's order
    assert rows[0].endswith("| 0.589 | 0.488 | reference |")
    # One seed each: the difference from full is given, its interval refused.
    assert f"| {NOT_FOUND} | 0.458 | " in rows[1]
    assert rows[1].endswith("(no interval: 1 seed), n=1 |")
    assert all(line.split("|")[2].strip() == "1" for line in rows)  # one seed each
