"""The paper setting for users with real weights: SAM from SAM_CHECKPOINT or stop, the paper's
protocol (every base image, final weights), the global batch, self-contained checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from _engine_data import write_tiny_dataset
from hydra import compose, initialize_config_dir
from test_engine_resume import tiny_overrides
from test_model_sam_init import _official_state_dict

from ovcamo import CONF_DIR
from ovcamo.engine import loop, train
from ovcamo.engine.check import CheckFailed, check_training
from ovcamo.models import load_model, model_config

PAPER_WIDTH_MODELS = sorted(
    p.stem for p in (CONF_DIR / "model").glob("*.yaml") if not p.stem.endswith("_micro")
)


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("paper") / "data", size=32)


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(_official_state_dict(), path)
    return path


def _paper(data: Path, out: Path, *extra: str) -> list[str]:
    return ["experiment=paper", f"data.root={data}", "logger=none", f"out_dir={out}", *extra]


def test_every_paper_width_model_reads_sam_checkpoint(monkeypatch, sam_file):
    monkeypatch.setenv("SAM_CHECKPOINT", str(sam_file))
    assert {"baclip", "ladder_sam", "ladder_sam_cce", "mrem_t2v", "no_prompt_sa"} <= set(
        PAPER_WIDTH_MODELS
    )
    for name in PAPER_WIDTH_MODELS:
        node = model_config(name, "convnext_large_d_320")
        assert node.sam_checkpoint == str(sam_file), name
        assert node.sam_required is False, name  # only the paper experiments require it
    # A SAM file fixes the decoder at 256 channels: micro widths never read the variable.
    assert model_config("baclip_micro").sam_checkpoint is None
    monkeypatch.delenv("SAM_CHECKPOINT")
    assert model_config("baclip", "convnext_large_d_320").sam_checkpoint is None


def test_paper_experiment_follows_the_papers_protocol(tmp_path):
    cfg = _compose("train", _paper(tmp_path, tmp_path / "run"))
    assert cfg.model.sam_required and cfg.model.name == "baclip"
    assert cfg.data.holdout_fraction == 0 and cfg.train.select == "final"
    assert cfg.train.batch_size == 4 and cfg.train.lr == pytest.approx(3e-5)
    assert cfg.backbone.name == "convnext_large_d_320" and cfg.backbone.image_size == 384


def test_cli_check_and_start_stop_without_sam(data, tmp_path):
    """``ovcamo-train experiment=paper`` without SAM_CHECKPOINT: exit 2 and one paragraph, at check
    and at start, before anything is built or written."""
    env = {k: v for k, v in os.environ.items() if k != "SAM_CHECKPOINT"}
    for extra in (["check=true"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "ovcamo", "train", *_paper(data, tmp_path / "run"), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        message = proc.stderr.strip().split("ovcamo-train: ", 1)[1]
        paragraph = message.removeprefix("check found problems:\n  - ")
        assert "\n" not in paragraph, message  # the SAM problem is the only one, one paragraph
        for words in (
            "export SAM_CHECKPOINT=",
            "sam_vit_b_01ec64.pth",
            "model.sam_checkpoint=none",
        ):
            assert words in paragraph
        # The run wrote nothing: no folder at all, or at most Hydra's own record and log.
        run = tmp_path / "run"
        written = {p.name for p in run.iterdir()} - {".hydra", "cli.log"} if run.exists() else set()
        assert not written


def test_explicit_none_or_a_sam_file_pass_the_check(data, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SAM_CHECKPOINT", raising=False)
    check_training(_compose("train", _paper(data, tmp_path / "a", "model.sam_checkpoint=none")))
    out = capsys.readouterr().out
    assert (
        "SAM weights: none, random initialisation (asked for with model.sam_checkpoint=none)" in out
    )
    assert "every base image is trained on; the final weights are the result" in out
    # The published blocks only, counted on the built model (random weights).
    assert "trainable parameters per block" in out and "addition" not in out
    assert "MREM (`mrem`): 921,088 trainable" in out
    assert "total: 10,143,643 trainable parameters" in out

    missing = tmp_path / "elsewhere.pth"
    with pytest.raises(CheckFailed, match=f"SAM file {missing} does not exist"):
        check_training(
            _compose("train", _paper(data, tmp_path / "b", f"model.sam_checkpoint={missing}"))
        )

    sam = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"mask_decoder.iou_token.weight": torch.zeros(1, 256)}, sam)
    monkeypatch.setenv("SAM_CHECKPOINT", str(sam))
    check_training(_compose("train", _paper(data, tmp_path / "c")))
    assert f"SAM weights: {sam} (" in capsys.readouterr().out


def test_loop_paper_experiment_without_sam_stops_before_any_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SAM_CHECKPOINT", raising=False)
    cache = tmp_path / "cache"
    cfg = _compose("loop", ["experiment=paper_baseline", "out_dir=x", f"cache_dir={cache}"])
    with pytest.raises(SystemExit) as exit_info:
        loop.main(cfg)
    assert exit_info.value.code == 2
    assert "export SAM_CHECKPOINT=" in capsys.readouterr().err
    assert not cache.exists()


def test_global_batch_is_split_over_processes(data, tmp_path, monkeypatch, capsys):
    overrides = [*tiny_overrides(data, tmp_path / "run"), "train.batch_size=4"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_training(_compose("train", overrides))
    assert "global batch 4 (2 per process)" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(CheckFailed, match="batch_size=4 is the global batch.*multiple of 3"):
        check_training(_compose("train", overrides))
    with pytest.raises(CheckFailed, match="multiple of 3"):
        train.run(_compose("train", overrides))  # at start too, before any process group


def test_trained_checkpoint_loads_from_its_folder_alone(data, tmp_path, sam_file):
    """A run with a SAM file and local CLIP weights; both moved away afterwards, the final
    checkpoint still loads and predicts exactly as before. select=final writes no best."""
    weights = tmp_path / "weights"
    weights.mkdir()
    sam = weights / sam_file.name
    sam.write_bytes(sam_file.read_bytes())
    clip = weights / "clip.pt"
    torch.manual_seed(3)
    torch.save(open_clip.create_model("ovcamo_micro_convnext").state_dict(), clip)
    run_dir = tmp_path / "run"
    cfg = _compose(
        "train",
        [
            *tiny_overrides(data, run_dir),
            f"backbone.pretrained={clip}",
            f"model.sam_checkpoint={sam}",
            "model.decoder.dim=256",
            "model.decoder.mlp_dim=2048",
            "model.decoder.num_heads=8",
            "train.select=final",
            "train.max_steps=2",
        ],
    )
    result = train.run(cfg)
    assert result.best_checkpoint is None and "cIoU" in result.val_metrics
    last = run_dir / "checkpoints" / "last"
    assert (last / "backbone.safetensors").is_file()
    before = load_model(run_dir)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    weights.rename(tmp_path / "moved")
    after = load_model(run_dir)
    assert after.config["sam_checkpoint"] == str(sam) and not sam.exists()
    with torch.no_grad():
        a, b = before(images, ["owl", "frog"]), after(images, ["owl", "frog"])
    for key in ("mask_logits", "class_logits"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    official = torch.load(tmp_path / "moved" / sam.name, weights_only=True)
    for key, tensor in after.prompt_encoder.state_dict().items():
        assert torch.equal(tensor, official["prompt_encoder." + key]), key
