"""Bad input through the commands' entry points: one paragraph naming the file and key, exit
status 2, no traceback, and nothing half-written. One test per case."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _engine_data import write_tiny_dataset
from generation_data import write_dataset
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from test_engine_resume import tiny_overrides

from ovcamo import CONF_DIR
from ovcamo.checkpoint import STATE_FILE, WEIGHTS_FILE, CheckpointError, load_state, save_weights
from ovcamo.data import (
    DataPaths,
    OVCamoDataset,
    UnreadableSampleError,
    load_sample_info,
    resolve_records,
)
from ovcamo.data.io import write_png
from ovcamo.engine import evaluate


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A tiny dataset and, in ``pred/``, a perfect prediction for every test sample."""
    root = write_tiny_dataset(tmp_path / "data")
    paths = DataPaths.from_paths_json(root / "paths.json")
    for s in load_sample_info(paths.sample_info):
        mask = paths.mask_dir("test") / s.mask_name
        if mask.is_file():
            (tmp_path / "pred").mkdir(exist_ok=True)
            shutil.copy(mask, tmp_path / "pred" / f"[{s.base_class}]{s.unique_id}.png")
    return root


def _eval_cfg(root: Path, **kw):
    paths = json.loads((root / "paths.json").read_text(encoding="utf-8"))
    cfg = {
        "data": {k: str(root / v) for k, v in paths.items()},
        "pred_dir": str(root.parent / "pred"),
        "out_dir": str(root.parent / "eval"),
        "num_workers": 1,
        "figures": False,
    }
    return OmegaConf.create(cfg | kw)


def _eval_fails(cfg, capsys) -> str:
    """Run ``ovcamo-eval``'s main, expect exit status 2 and no output folder; return stderr."""
    with pytest.raises(SystemExit) as info:
        evaluate.main(cfg)
    assert info.value.code == 2
    out_dir = Path(cfg.out_dir)
    assert not out_dir.is_dir() or not any(out_dir.iterdir())
    return capsys.readouterr().err


def _edit_samples(root: Path, index: int, **fields) -> None:
    path = root / "sample_info.json"
    samples = json.loads(path.read_text(encoding="utf-8"))
    samples[index].update(fields)
    path.write_text(json.dumps(samples), encoding="utf-8")


def test_sample_id_that_is_not_an_integer(data: Path, capsys) -> None:
    _edit_samples(data, 2, id="six")
    err = _eval_fails(_eval_cfg(data), capsys)
    assert str(data / "sample_info.json") in err
    assert "entry 2 (unique_id '000002_snow leopard') has id = \"six\": expected an integer" in err


def test_json_file_that_is_not_utf8(data: Path) -> None:
    path = data / "sample_info.json"
    path.write_bytes(
        path.read_text(encoding="utf-8").replace("reccoon", "räccoon").encode("cp1252")
    )
    # Through the real command: no traceback, one paragraph, exit status 2.
    args = [f"{k}={v}" for k, v in _eval_cfg(data).items() if k != "data"]
    args += [f"data.{k}={v}" for k, v in _eval_cfg(data).data.items()]
    code = "from ovcamo.cli import evaluate; evaluate()"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert (
        f"{path}: not UTF-8 text (byte " in done.stderr
        and "re-save the file as UTF-8" in done.stderr
    )
    assert not (data.parent / "eval").exists()


def test_unique_id_null(data: Path, capsys) -> None:
    _edit_samples(data, -1, unique_id=None)
    err = _eval_fails(_eval_cfg(data), capsys)
    assert "entry 23 has unique_id = null: expected a non-empty string" in err
    assert "None.png" not in err


def test_out_dir_naming_a_file_is_refused_before_scoring(data: Path, capsys, monkeypatch) -> None:
    target = data.parent / "eval.txt"
    target.write_text("notes", encoding="utf-8")

    def must_not_score(*a, **kw):
        raise AssertionError("scoring started before out_dir was checked")

    monkeypatch.setattr(evaluate, "score_prediction_dir", must_not_score)
    with pytest.raises(SystemExit) as info:
        evaluate.main(_eval_cfg(data, out_dir=str(target)))
    assert info.value.code == 2
    assert f"out_dir={target}: it is a file" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "notes"


def test_truncated_png_says_whether_prediction_or_gt(data: Path, capsys) -> None:
    pred = sorted((data.parent / "pred").iterdir())[0]
    pred.write_bytes(pred.read_bytes()[:-30])
    err = _eval_fails(_eval_cfg(data), capsys)
    assert f"unreadable prediction (1): {pred} (" in err
    assert "mask" not in err.split("unreadable prediction")[1]

    shutil.copy(data / "test" / "mask" / pred.name.split("]")[1], pred)
    gt = sorted((data / "test" / "mask").iterdir())[1]
    gt.write_bytes(gt.read_bytes()[:-30])
    err = _eval_fails(_eval_cfg(data), capsys)
    assert f"unreadable GT mask (1): {gt} (" in err and "unreadable prediction" not in err


def test_subfolder_in_the_prediction_folder(data: Path, capsys) -> None:
    (data.parent / "pred" / "figures").mkdir()
    err = _eval_fails(_eval_cfg(data), capsys)
    assert (
        "folder inside the prediction folder (predictions are PNG files directly in it) (1): figures"
        in err
    )
    assert "without the [<class>] prefix" not in err


def test_all_zero_gt_mask_is_reported_by_validation_and_refused_by_the_evaluator(
    data: Path, capsys
) -> None:
    gt = sorted((data / "test" / "mask").iterdir())[0]
    train_mask = sorted((data / "train" / "mask").iterdir())[0]
    for path in (gt, train_mask):
        write_png(path, np.zeros_like(np.asarray(Image.open(path))))
    paths = DataPaths.from_paths_json(data / "paths.json")
    for split, path in (("test", gt), ("train", train_mask)):
        records, report = resolve_records(paths, split)  # the default check
        assert report.counts["empty_mask"] == 1 and report.examples["empty_mask"] == [path.stem]
        assert path.stem in {r.unique_id for r in records}  # kept: a warning, not an error
        assert "warning empty_mask: 1" in report.summary()
        assert "allow_empty_gt=true" in report.summary()
    err = _eval_fails(_eval_cfg(data), capsys)
    assert "GT mask without a foreground pixel" in err and str(gt) in err
    results = evaluate.main(_eval_cfg(data, allow_empty_gt=True))
    assert results.num_samples == 6 and (data.parent / "eval" / "metrics.json").is_file()


def _corrupt_jpeg_body(path: Path) -> None:
    """Overwrite the entropy-coded body of a JPEG, keeping its header and end marker, with bytes
    libjpeg refuses (the first seed whose bytes make the decoder raise)."""
    raw = path.read_bytes()
    start = raw.find(b"\xff\xda") + 20
    for seed in range(100):
        body = np.random.default_rng(seed).integers(0, 256, len(raw) - 2 - start, np.uint8)
        bad = raw[:start] + body.tobytes() + raw[-2:]
        try:
            with Image.open(io.BytesIO(bad)) as im:
                im.load()
        except OSError:
            path.write_bytes(bad)
            return
    raise AssertionError("no corruption found that the decoder refuses")


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=overrides)


def test_corrupt_jpeg_body_names_the_file_when_read(tmp_path: Path, capsys) -> None:
    data = write_tiny_dataset(tmp_path / "data", {"snow leopard": 2, "owl": 2, "frog": 1}, size=32)
    samples = json.loads((data / "sample_info.json").read_text(encoding="utf-8"))
    uid = samples[1]["unique_id"]
    png = data / "train" / "image" / f"{uid}.png"
    jpg = png.with_suffix(".jpg")
    Image.open(png).convert("RGB").save(jpg, quality=90)
    png.unlink()
    _edit_samples(data, 1, image=f"{uid}.jpg")
    _corrupt_jpeg_body(jpg)
    # The default check reads headers and end markers only: the file passes it ...
    dataset = OVCamoDataset(DataPaths.from_paths_json(data / "paths.json"), "train")
    assert dataset.report.n_errors == 0
    # ... and reading the sample names the sample and the file.
    with pytest.raises(UnreadableSampleError, match=f"image of '{uid}' cannot be decoded: {jpg}"):
        dataset[[r.unique_id for r in dataset.records].index(uid)]
    from ovcamo.engine.train import main

    cfg = compose_train(
        [*tiny_overrides(data, tmp_path / "run"), "data.holdout_fraction=0", "data.strict=true"]
    )
    with pytest.raises(SystemExit) as info:
        main(cfg)
    assert info.value.code == 2
    assert str(jpg) in capsys.readouterr().err


def _generate_cfg(root: Path, out: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(
            "generate",
            overrides=[
                "data=ovcamo",
                f"data.root={root}",
                "data.holdout_fraction=0",
                f"out_dir={out}",
                "progress=false",
                "device=cpu",
                "planner.rule=target",
                "planner.target_count=8",
                *extra,
            ],
        )


def test_planner_plans_only_from_readable_sources(tmp_path: Path, capsys) -> None:
    root = write_dataset(tmp_path / "ds").parent
    images = sorted((root / "train" / "image").iterdir())
    broken = {images[i].stem for i in (0, 1, 7, 8)}  # two snow leopards, two owls
    for i in (0, 1, 7, 8):
        images[i].write_bytes(images[i].read_bytes()[:-40])
    from generation.run import main

    main(_generate_cfg(root, tmp_path / "syn"))
    plan = json.loads((tmp_path / "syn" / "plan.json").read_text(encoding="utf-8"))
    assert len(plan["items"]) == 23  # 8 − (4, 2, 2, 1) usable sources
    assert not broken & {i["source_unique_id"] for i in plan["items"]}
    assert plan["counts"] == {"snow leopard": 4, "owl": 2, "mantis": 2, "reccoon": 1}
    assert plan["source_validation"]["train"]["counts"]["unreadable_image"] == 4
    summary = json.loads((tmp_path / "syn" / "summary.json").read_text(encoding="utf-8"))
    assert summary["written"] == 23 and summary["skipped"] == 0
    out = capsys.readouterr().out
    assert "excluded from the sources: 4 of 13 train samples: unreadable_image 4 (e.g." in out
    # data.strict=true stops before anything is written.
    with pytest.raises(SystemExit) as info:
        main(_generate_cfg(root, tmp_path / "strict", "data.strict=true"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unusable samples in the train split of" in err and "unreadable_image: 4" in err
    assert not (tmp_path / "strict").exists()


def test_generate_from_a_missing_dataset(tmp_path: Path, capsys) -> None:
    from generation.run import main

    with pytest.raises(SystemExit) as info:
        main(_generate_cfg(tmp_path / "absent", tmp_path / "syn"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"data.class_info not found: {tmp_path / 'absent' / 'class_info.json'}" in err
    assert not (tmp_path / "syn").exists()


def _pickled_checkpoint(directory: Path) -> None:
    """A checkpoint folder whose state.pt holds an object weights_only loading refuses."""
    import argparse

    directory.mkdir(parents=True)
    save_weights(directory / WEIGHTS_FILE, {"x": torch.zeros(1)})
    torch.save({"step": 3, "args": argparse.Namespace(lr=0.1)}, directory / STATE_FILE)
    (directory / "config.json").write_text("{}", encoding="utf-8")


def test_pickled_state_on_resume_and_evaluation(tmp_path: Path, capsys) -> None:
    data = write_tiny_dataset(tmp_path / "data", {"owl": 2, "frog": 1}, size=32)
    run_dir = tmp_path / "run"
    _pickled_checkpoint(run_dir / "checkpoints" / "last")
    state = run_dir / "checkpoints" / "last" / STATE_FILE
    from ovcamo.engine.train import main

    with pytest.raises(SystemExit) as info:
        main(compose_train([*tiny_overrides(data, run_dir), "resume=true"]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{state} is not a safe checkpoint" in err
    assert "argparse.Namespace" in err and "weights_only=False" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]

    cfg = _eval_cfg(data, checkpoint=str(run_dir), pred_dir=None, out_dir=str(tmp_path / "ev"))
    with pytest.raises(SystemExit) as info:
        evaluate.main(cfg)
    assert info.value.code == 2
    assert f"{state} is not a safe checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()

    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="is not a readable torch file .* damaged"):
        load_state(state)
