"""The training engine in-process on a tiny dataset: run folder, faults, protocol flag, check mode."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import pytest
import torch
from _engine_data import TEST_CLASSES, write_tiny_dataset
from hydra import compose, initialize_config_dir
from test_engine_resume import tiny_overrides

from ovcamo import CONF_DIR
from ovcamo.checkpoint import load_state, load_weights, save_checkpoint, save_weights
from ovcamo.data import DataPaths, OVCamoDataset
from ovcamo.data.transforms import EvalTransform
from ovcamo.engine.check import CheckFailed
from ovcamo.engine.distributed import init_distributed
from ovcamo.engine.evaluate import score_prediction_dir
from ovcamo.engine.logging import read_metrics
from ovcamo.engine.predict import SampleReadError, evaluate_model, predict_to_dir
from ovcamo.engine.train import NonFiniteLossError, ResumeError, run
from ovcamo.engine.visualize import write_eval_figures
from ovcamo.models import load_model
from ovcamo.models.baclip import BaCLIP
from ovcamo.provenance import code_version


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("engine") / "data", size=32)


def test_run_folder_checkpoints_and_predictions(data, tmp_path):
    cfg = compose_train(
        [
            *tiny_overrides(data, tmp_path / "run"),
            "train.epochs=1",
            "train.lr=0.01",
            "train.select=best",
        ]
    )
    result = run(cfg)
    run_dir = tmp_path / "run"
    assert result.run_dir == run_dir and result.steps == 6 and result.epochs == 1
    assert result.best_checkpoint == run_dir / "checkpoints" / "best"
    assert result.train_seconds > 0
    saved = (run_dir / "config.yaml").read_text()
    assert "image_size: 32" in saved and "${" not in saved  # resolved
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["outside_ov_protocol"] is False and info["result"]["steps"] == 6
    assert info["base_classes"] == ["snow leopard", "reccoon", "owl"]
    assert info["provenance"]["code_version"] == code_version()
    assert info["provenance"]["libraries"]["torch"] == importlib.metadata.version("torch")
    lines = read_metrics(run_dir / "metrics.jsonl")
    assert [x["step"] for x in lines if "train/loss" in x] == [1, 2, 3, 4, 5, 6]
    assert [x["val/cIoU"] for x in lines if "val/cIoU" in x] == [result.val_metrics["cIoU"]]
    # cosine annealing over the run's 6 optimiser steps (lr 0.01, logged after each step)
    lrs = [x["train/lr"] for x in lines if "train/lr" in x]
    cosine = [0.005 * (1 + torch.cos(torch.tensor(torch.pi * s / 6))).item() for s in range(1, 7)]
    assert lrs == pytest.approx(cosine, abs=1e-9)
    # The frozen CLIP is written once: every later checkpoint links that file.
    last, best = (run_dir / "checkpoints" / n / "backbone.safetensors" for n in ("last", "best"))
    assert last.stat().st_ino == best.stat().st_ino and last.stat().st_nlink == 2
    clip = load_model(run_dir).backbone.clip.state_dict()
    saved = load_weights(last)
    assert saved.keys() == clip.keys() and all(torch.equal(saved[k], clip[k]) for k in clip)

    pcfg = compose_train([*tiny_overrides(data, tmp_path / "eval"), f"+checkpoint={run_dir}"])
    pred_dir = predict_to_dir(pcfg, split="test")
    files = sorted(p.name for p in pred_dir.iterdir())
    assert len(files) == 6 and pred_dir == tmp_path / "eval" / "predictions"
    for name in files:
        pred_class, uid = name[1:].split("]", 1)
        assert pred_class in TEST_CLASSES and uid.endswith(".png")
    val_dir = predict_to_dir(pcfg, split="train", part="val")
    assert val_dir.name == "predictions_val" and len(list(val_dir.iterdir())) == 6
    # The validation inside training scored the best checkpoint as the evaluator scores its PNGs.
    val_ids = [p.name.split("]", 1)[1].removesuffix(".png") for p in val_dir.iterdir()]
    paths = DataPaths.from_paths_json(data / "paths.json")
    val_scored = score_prediction_dir(
        val_dir, paths, split="train", unique_ids=val_ids, num_workers=1
    )
    assert result.val_metrics["cIoU"] == pytest.approx(val_scored.metrics["cIoU"], abs=1e-9)

    # The written PNGs score exactly as the in-memory evaluation of the same checkpoint.
    scored = score_prediction_dir(pred_dir, paths, split="test", num_workers=1)
    model = load_model(run_dir)
    test_set = OVCamoDataset(paths, "test", transform=EvalTransform(32))
    direct, _, _ = evaluate_model(
        model, test_set, test_set.class_names, dist=init_distributed("cpu"), progress=False
    )
    assert {**scored.metrics, **scored.diagnostics} == pytest.approx(direct, abs=1e-12)
    figures = write_eval_figures(scored, paths, tmp_path / "figures", n=2)
    assert sorted(figures) == ["best", "per_class", "worst"]
    assert all(p.stat().st_size > 1000 for p in figures.values())


def test_non_finite_loss_saves_last_good_state_and_names_the_batch(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = BaCLIP.loss

    def loss(self, outputs, masks):
        out = original(self, outputs, masks)
        calls["n"] += 1
        if calls["n"] == 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(BaCLIP, "loss", loss)
    cfg = compose_train([*tiny_overrides(data, tmp_path / "run"), "train.ckpt_every_steps=100"])
    with pytest.raises(NonFiniteLossError, match=r"at step 4 .*unique_ids: \['0000") as err:
        run(cfg)
    assert "after step 3" in str(err.value)
    state = load_state(tmp_path / "run" / "checkpoints" / "last" / "state.pt")
    assert state["step"] == 3 and state["batch"] == 3 and state["epoch"] == 0


def _corrupt_one_train_image(root: Path) -> str:
    image = sorted((root / "train" / "image").iterdir())[1]
    raw = bytearray(image.read_bytes())
    raw[60:-20] = bytes(len(raw) - 80)  # header and end intact, compressed pixels zeroed
    image.write_bytes(bytes(raw))
    return image.stem


SMALL = {"snow leopard": 2, "reccoon": 2, "owl": 2, "frog": 1}


def test_corrupt_sample_is_skipped_and_counted_or_stops_when_strict(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", SMALL, size=32)
    uid = _corrupt_one_train_image(data)
    cfg = compose_train(
        [*tiny_overrides(data, tmp_path / "a"), "train.epochs=1", "data.holdout_fraction=0"]
    )
    result = run(cfg)
    assert result.skipped_samples == 1 and result.invalid_samples == 0 and result.steps == 3
    skipped = [x for x in read_metrics(tmp_path / "a" / "metrics.jsonl") if "data/skipped_id" in x]
    assert [x["data/skipped_id"] for x in skipped] == [uid]
    strict = compose_train(
        [*tiny_overrides(data, tmp_path / "b"), "data.strict=true", "data.holdout_fraction=0"]
    )
    with pytest.raises(SampleReadError, match=uid):
        run(strict)


def test_samples_unusable_at_load_are_dropped_and_counted(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", SMALL, size=32)
    sorted((data / "train" / "mask").iterdir())[0].unlink()
    cfg = compose_train(
        [*tiny_overrides(data, tmp_path / "run"), "train.max_steps=1", "data.holdout_fraction=0"]
    )
    result = run(cfg)
    assert result.invalid_samples == 1 and result.skipped_samples == 0
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["data_validation"]["counts"]["missing_mask"] == 1
    from ovcamo.data import DatasetValidationError

    with pytest.raises(DatasetValidationError, match="missing_mask"):
        run(compose_train([*tiny_overrides(data, tmp_path / "b"), "data.strict=true"]))


def test_missing_file_after_loading_is_skipped(tmp_path, monkeypatch):
    data = write_tiny_dataset(tmp_path / "data", SMALL, size=32)
    from ovcamo.data import mixing

    original = mixing.load_sources

    def load_then_delete(*a, **kw):
        sources = original(*a, **kw)
        sources[0].records[0].mask_path.unlink()
        return sources

    monkeypatch.setattr(mixing, "load_sources", load_then_delete)
    monkeypatch.setattr("ovcamo.engine.train.load_sources", load_then_delete)
    # channels_last and gradient accumulation ride along: 3 batches, 2 per step → 2 steps
    cfg = compose_train(
        [
            *tiny_overrides(data, tmp_path / "run"),
            "train.epochs=1",
            "data.holdout_fraction=0",
            "train.channels_last=true",
            "train.grad_accum=2",
        ]
    )
    result = run(cfg)
    assert result.skipped_samples == 1 and result.steps == 2


def test_novel_synthetic_marks_the_run_outside_the_protocol(data, tmp_path):
    syn = write_tiny_dataset(tmp_path / "syn", {"frog": 2, "owl": 2}, seed=3, synthetic=True)
    base = [
        *tiny_overrides(data, tmp_path / "run"),
        f"data.synthetic=[{syn}]",
        "data.synthetic_ratio=0.5",
    ]
    from ovcamo.data.mixing import SyntheticSetError

    with pytest.raises(SyntheticSetError, match="allow_novel_synthetic"):
        run(compose_train([*base, "train.max_steps=1"]))
    result = run(compose_train([*base, "data.allow_novel_synthetic=true", "train.max_steps=2"]))
    assert result.outside_ov_protocol
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["outside_ov_protocol"] is True and "OUTSIDE" in info["outside_ov_protocol_note"]
    assert info["sources"][1]["share"] == pytest.approx(0.5)
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert lines and all(x["outside_ov_protocol"] for x in lines)
    # batch 2 at a 0.5 share: one synthetic sample in every batch
    assert [x["train/synthetic_share"] for x in lines if "train/loss" in x] == [0.5, 0.5]


def test_resume_refuses_other_settings_and_existing_run(data, tmp_path):
    args = [*tiny_overrides(data, tmp_path / "run"), "train.epochs=1", "train.max_steps=2"]
    run(compose_train(args))
    with pytest.raises(ResumeError, match=r"train\.lr"):
        run(compose_train([*args, "resume=true", "train.lr=0.5"]))
    with pytest.raises(ResumeError, match="resume=true"):
        run(compose_train(args))


def test_check_validates_without_computing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(compose_train([*tiny_overrides(data, out), "check=true"])) is None
    printed = capsys.readouterr().out
    assert "check passed" in printed and "optimiser steps" in printed
    assert not out.exists()
    bad = [
        *tiny_overrides(data, out),
        "check=true",
        "backbone.pretrained=/nowhere/clip.bin",
        "data.test_mask_dir=/nowhere/masks",
        "train.batch_size=0",
        "train.select=best",
        "train.val_every_epochs=0",
    ]
    with pytest.raises(CheckFailed) as err:
        run(compose_train(bad))
    msg = str(err.value)
    assert "/nowhere/clip.bin" in msg and "data.test_mask_dir=/nowhere/masks" in msg
    assert "train.batch_size" in msg and "train.val_every_epochs=0 never validates" in msg
    negative = [*tiny_overrides(data, out), "check=true", "train.val_every_epochs=-1"]
    with pytest.raises(CheckFailed, match="train.val_every_epochs must be a whole number"):
        run(compose_train(negative))


def test_val_every_zero_trains_without_validating(data, tmp_path):
    cfg = compose_train(
        [*tiny_overrides(data, tmp_path / "run"), "train.epochs=1", "train.val_every_epochs=0"]
    )
    result = run(cfg)
    lines = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result.steps == 6 and any("train/loss" in x for x in lines)
    assert result.val_metrics == {} and not any(k.startswith("val/") for x in lines for k in x)


def test_linked_checkpoint_file_is_copied_where_links_fail(tmp_path, monkeypatch):
    frozen = tmp_path / "frozen.safetensors"
    save_weights(frozen, {"w": torch.arange(3.0)})

    def no_links(*_):
        raise OSError("links not supported")

    monkeypatch.setattr(os, "link", no_links)
    save_checkpoint(tmp_path / "ck", {"a": torch.zeros(1)}, {"step": 1}, linked={"b.st": frozen})
    copied = tmp_path / "ck" / "b.st"
    assert copied.stat().st_ino != frozen.stat().st_ino
    assert torch.equal(load_weights(copied)["w"], torch.arange(3.0))
