"""Hostile input through the real console scripts (``python -m ovcamo <command>``): decompression
bombs, symbolic link loops, damaged checkpoints, an ``out_dir`` that is a file, numbers no run can
use and pickled weights. Every case must end with exit status 2, one line on stderr that starts
with ``ovcamo-<command>: `` and names the file or key, no traceback, no advice to load unsafely,
and nothing written: the folder the case runs in is the same file for file afterwards."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _engine_data import write_tiny_checkpoint, write_tiny_dataset

from ovcamo.checkpoint import STATE_FILE
from ovcamo.data import DataPaths, load_sample_info
from ovcamo.data.io import write_png

#: Pixels the bomb's header declares: far above PIL's limit, in a file of a few hundred bytes.
BOMB_SIDE = 40000
BOMB_REASON = f"declares {BOMB_SIDE * BOMB_SIDE} pixels"
#: A pickled state is not a safe checkpoint; the message names the foreign object and the safe way
#: to convert a trusted file.
PICKLE_REASON = ("not a safe checkpoint", "argparse.Namespace", "safetensors.torch.save_file")


def bomb_png(path: Path) -> Path:
    """A valid PNG whose header declares ``BOMB_SIDE``² grey pixels (1.6 gigapixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )
    return path


def link_loop(path: Path) -> Path:
    """Replace ``path`` by a symbolic link to itself."""
    path.unlink(missing_ok=True)
    os.symlink(path.name, path)
    return path


def first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` (tiny dataset), ``pred/`` (a perfect prediction per test sample), ``images/``
    (one photo) and ``ckpt/`` (a tiny checkpoint); cases copy what they damage."""
    root = tmp_path_factory.mktemp("hostile")
    data = write_tiny_dataset(root / "data", {"owl": 3, "frog": 2}, size=32)
    paths = DataPaths.from_paths_json(data / "paths.json")
    (root / "pred").mkdir()
    for s in load_sample_info(paths.sample_info):
        mask = paths.mask_dir("test") / s.mask_name
        if mask.is_file():
            shutil.copy(mask, root / "pred" / f"[{s.base_class}]{s.unique_id}.png")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    write_png(root / "images" / "a.png", image)
    write_tiny_checkpoint(root / "ckpt")
    return root


def data_keys(data: Path) -> list[str]:
    layout = DataPaths.from_paths_json(data / "paths.json").to_json()
    return [f"data.{k}={v}" for k, v in layout.items()]


def train_args(data: Path, out: Path) -> list[str]:
    return [
        "data=ovcamo",
        *data_keys(data),
        "data.holdout_fraction=0",
        "backbone.pretrained=null",
        "backbone.image_size=32",
        "train.epochs=1",
        "train.batch_size=2",
        "train.progress=false",
        "logger=none",
        f"out_dir={out}",
    ]


class Case:
    """Where a case runs: ``dir`` (its own folder), the shared fixtures, and copies to damage."""

    def __init__(self, dir: Path, base: Path):
        self.dir, self.base = dir, base
        self.out = dir / "out"

    def copy(self, name: str) -> Path:
        """A private copy of ``base/<name>`` (hard links for the checkpoint's big files)."""
        copy = shutil.copy2 if name != "ckpt" else _link_or_copy
        shutil.copytree(self.base / name, self.dir / name, copy_function=copy, symlinks=True)
        return self.dir / name

    def data(self) -> Path:
        return self.base / "data"

    def eval_pred(self, data: Path, pred: Path, *extra: str) -> list[str]:
        return [
            f"pred_dir={pred}",
            *data_keys(data),
            f"out_dir={self.out}",
            "figures=false",
            *extra,
        ]

    def eval_ckpt(self, ckpt: Path, *extra: str) -> list[str]:
        return [f"checkpoint={ckpt}", *data_keys(self.data()), f"out_dir={self.out}", *extra]

    def predict(self, ckpt: Path, images: Path, *extra: str) -> list[str]:
        return [
            f"checkpoint={ckpt}",
            f"images={images}",
            "classes=[owl,frog]",
            f"out_dir={self.out}",
            *extra,
        ]

    def generate(self, data: Path, *extra: str) -> list[str]:
        return [
            "data=ovcamo",
            *data_keys(data),
            "data.holdout_fraction=0",
            "progress=false",
            "device=cpu",
            "planner.rule=target",
            "planner.target_count=6",
            f"out_dir={self.out}",
            *extra,
        ]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _truncate(path: Path, keep: int = 100) -> None:
    """Cut ``path`` short in a fresh inode (the original may be a hard link to the fixture)."""
    data = path.read_bytes()[:keep]
    path.unlink()
    path.write_bytes(data)


def _rewrite(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text, encoding="utf-8")


def _pickled_state(ckpt: Path) -> None:
    (ckpt / STATE_FILE).unlink()
    torch.save({"seed": 0, "args": argparse.Namespace(lr=0.1)}, ckpt / STATE_FILE)


def _bomb_gt(c: Case):
    data = c.copy("data")
    gt = bomb_png(first(data / "test" / "mask"))
    return "eval", c.eval_pred(data, c.base / "pred"), str(gt), BOMB_REASON


def _bomb_prediction(c: Case):
    pred = c.copy("pred")
    return "eval", c.eval_pred(c.data(), pred), str(bomb_png(first(pred)))


def _bomb_predict_image(c: Case):
    images = c.copy("images")
    bomb = str(bomb_png(images / "b.png"))
    return "predict", c.predict(c.base / "ckpt", images), bomb, BOMB_REASON


def _bomb_generate_source(c: Case):
    data = c.copy("data")
    bomb = bomb_png(first(data / "train" / "image"))
    # data.strict=true stops on an unusable source; without it the source is left out (tested
    # in test_bad_input) and the set is generated from the others.
    return "generate", c.generate(data, "data.strict=true"), bomb.stem


def _bomb_training_image(c: Case):
    data = c.copy("data")
    bomb = bomb_png(first(data / "train" / "image"))
    return "train", [*train_args(data, c.out), "data.strict=true"], bomb.stem


def _loop_in_mask_dir(c: Case):
    data = c.copy("data")
    loop = str(link_loop(first(data / "test/mask")))
    return "eval", c.eval_pred(data, c.base / "pred"), loop, "symbolic link loop"


def _loop_in_prediction_dir(c: Case):
    pred = c.copy("pred")
    return "eval", c.eval_pred(c.data(), pred), str(link_loop(first(pred))), "symbolic link loop"


def _loop_in_predict_images(c: Case):
    images = c.copy("images")
    return "predict", c.predict(c.base / "ckpt", images), str(link_loop(images / "b.png"))


def _eval_truncated_backbone(c: Case):
    ckpt = c.copy("ckpt")
    _truncate(ckpt / "backbone.safetensors")
    return "eval", c.eval_ckpt(ckpt), str(ckpt / "backbone.safetensors")


def _eval_truncated_weights(c: Case):
    ckpt = c.copy("ckpt")
    _truncate(ckpt / "model.safetensors", keep=(ckpt / "model.safetensors").stat().st_size // 2)
    return "eval", c.eval_ckpt(ckpt), str(ckpt / "model.safetensors")


def _eval_config_without_keys(c: Case):
    ckpt = c.copy("ckpt")
    _rewrite(ckpt / "config.json", json.dumps({"name": "baclip"}))
    return "eval", c.eval_ckpt(ckpt), str(ckpt / "config.json")


def _predict_config_not_json(c: Case):
    ckpt = c.copy("ckpt")
    _rewrite(ckpt / "config.json", "{'backbone': oops")
    return "predict", c.predict(ckpt, c.base / "images"), str(ckpt / "config.json")


def _predict_truncated_backbone(c: Case):
    ckpt = c.copy("ckpt")
    _truncate(ckpt / "backbone.safetensors")
    return "predict", c.predict(ckpt, c.base / "images"), str(ckpt / "backbone.safetensors")


def _predict_pickled_state(c: Case):
    ckpt = c.copy("ckpt")
    _pickled_state(ckpt)
    return "predict", c.predict(ckpt, c.base / "images"), str(ckpt / STATE_FILE), *PICKLE_REASON


def _resume_truncated_weights(c: Case):
    last = c.out / "checkpoints" / "last"
    shutil.copytree(c.base / "ckpt", last, copy_function=_link_or_copy)
    _truncate(last / "model.safetensors")
    return "train", [*train_args(c.data(), c.out), "resume=true"], str(last / "model.safetensors")


def _resume_config_not_json(c: Case):
    last = c.out / "checkpoints" / "last"
    shutil.copytree(c.base / "ckpt", last, copy_function=_link_or_copy)
    _rewrite(last / "config.json", "not json")
    return "train", [*train_args(c.data(), c.out), "resume=true"], str(last / "config.json")


def _resume_pickled_state(c: Case):
    last = c.out / "checkpoints" / "last"
    shutil.copytree(c.base / "ckpt", last, copy_function=_link_or_copy)
    _pickled_state(last)
    args = [*train_args(c.data(), c.out), "resume=true"]
    return "train", args, str(last / STATE_FILE), *PICKLE_REASON


def _setting(command: str, key: str, value: str) -> Callable[[Case], tuple]:
    def case(c: Case):
        if command == "train":
            args = train_args(c.data(), c.out)
        elif command == "eval":
            args = c.eval_pred(c.data(), c.base / "pred")
        elif command == "predict":
            args = c.predict(c.base / "ckpt", c.base / "images")
        elif command == "generate":
            args = c.generate(c.data(), "generator=outpaint_micro")
        else:  # loop
            args = [f"out_dir={c.out}"]
        return command, [*args, f"{key}={value}"], f"{key}={value}"

    return case


CASES: dict[str, Callable[[Case], tuple]] = {
    "bomb-gt-mask": _bomb_gt,
    "bomb-prediction": _bomb_prediction,
    "bomb-predict-image": _bomb_predict_image,
    "bomb-generate-source": _bomb_generate_source,
    "bomb-training-image": _bomb_training_image,
    "loop-mask-dir": _loop_in_mask_dir,
    "loop-prediction-dir": _loop_in_prediction_dir,
    "loop-predict-images": _loop_in_predict_images,
    "eval-truncated-backbone": _eval_truncated_backbone,
    "eval-truncated-weights": _eval_truncated_weights,
    "eval-config-without-keys": _eval_config_without_keys,
    "predict-config-not-json": _predict_config_not_json,
    "predict-truncated-backbone": _predict_truncated_backbone,
    "predict-pickled-state": _predict_pickled_state,
    "resume-truncated-weights": _resume_truncated_weights,
    "resume-config-not-json": _resume_config_not_json,
    "resume-pickled-state": _resume_pickled_state,
    "train-batch-0": _setting("train", "train.batch_size", "0"),
    "train-workers-negative": _setting("train", "train.num_workers", "-1"),
    "train-epochs-0": _setting("train", "train.epochs", "0"),
    "train-max-steps-negative": _setting("train", "train.max_steps", "-1"),
    "eval-batch-0": _setting("eval", "batch_size", "0"),
    "eval-workers-negative": _setting("eval", "num_workers", "-1"),
    "predict-batch-negative": _setting("predict", "batch_size", "-3"),
    "generate-batch-0": _setting("generate", "generator.micro.batch_size", "0"),
    "loop-batch-0": _setting("loop", "train.batch_size", "0"),
    "planner-per-class-negative": _setting("generate", "planner.per_class", "-2"),
    "planner-cap-negative": _setting("generate", "planner.max_per_class", "-1"),
}

#: What every command's out_dir case needs besides out_dir.
OUT_DIR_ARGS: dict[str, Callable[[Case], list[str]]] = {
    "eval": lambda c: c.eval_pred(c.data(), c.base / "pred"),
    "predict": lambda c: c.predict(c.base / "ckpt", c.base / "images"),
    "train": lambda c: train_args(c.data(), c.out),
    "generate": lambda c: c.generate(c.data()),
    "world": lambda c: [],
    "micro-clip": lambda c: [],
    "loop": lambda c: [],
}


#: Hydra's record of a run (its composed config and log), which it writes into a run folder that
#: already exists before the command starts; a refused re-run of ``ovcamo-train`` replaces it there.
HYDRA_RECORD = (".hydra", "cli.log")


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes | str | None]:
    """Every path under ``root`` with its content (a link's target; ``None`` for a folder), but
    those with a part named in ``skip``."""
    tree: dict[str, bytes | str | None] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if set(Path(key).parts) & set(skip):
            continue
        if p.is_symlink():
            tree[key] = os.readlink(p)
        elif p.is_dir():
            tree[key] = None
        else:
            tree[key] = p.read_bytes()
    return tree


def run_refused(command: str, args: list[str], where: Path) -> str:
    """Run ``ovcamo <command> args`` in ``where``; assert the refusal contract and that nothing
    under ``where`` changed (in a run folder that existed before, Hydra's record aside); return
    the one stderr line."""
    skip = HYDRA_RECORD if (where / "out").is_dir() else ()
    before = _tree(where, skip)
    done = subprocess.run(
        [sys.executable, "-m", "ovcamo", command, *args],
        capture_output=True,
        text=True,
        cwd=where,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OVCAMO_CACHE": str(where / "cache")},
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"ovcamo-{command}: "), done.stderr
    assert "weights_only=False" not in done.stderr
    after = _tree(where, skip)
    assert after == before, sorted(set(after) ^ set(before))
    return lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused(name: str, base: Path, tmp_path: Path) -> None:
    command, args, *named = CASES[name](Case(tmp_path, base))
    line = run_refused(command, args, tmp_path)
    assert all(n in line for n in named), (named, line)


@pytest.mark.parametrize("command", list(OUT_DIR_ARGS))
def test_out_dir_that_is_a_file(command: str, base: Path, tmp_path: Path) -> None:
    c = Case(tmp_path, base)
    c.out.write_text("notes\n", encoding="utf-8")
    args = [a for a in OUT_DIR_ARGS[command](c) if not a.startswith("out_dir=")]
    line = run_refused(command, [*args, f"out_dir={c.out}"], tmp_path)
    assert str(c.out) in line
    assert c.out.read_text(encoding="utf-8") == "notes\n"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into read-only folders: a not-writable out_dir cannot be made here",
)
def test_out_dir_not_writable(base: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    c = Case(tmp_path, base)
    line = run_refused(
        "eval", [*c.eval_pred(c.data(), base / "pred"), f"out_dir={locked}/ev"], tmp_path
    )
    assert f"{locked} is not writable" in line


def test_failed_rerun_keeps_the_earlier_result(base: Path, tmp_path: Path) -> None:
    """A good ``ovcamo-predict`` run, then the same out_dir with a bomb among the images: refused,
    and the first run's masks, overlays and predictions.json are byte for byte as they were."""
    c = Case(tmp_path, base)
    images = c.copy("images")
    done = subprocess.run(
        [sys.executable, "-m", "ovcamo", "predict", *c.predict(base / "ckpt", images)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    earlier = _tree(c.out)
    assert "predictions.json" in earlier and "masks/a.png" in earlier
    bomb_png(images / "b.png")
    assert str(images / "b.png") in run_refused(
        "predict", c.predict(base / "ckpt", images), tmp_path
    )
    assert _tree(c.out) == earlier


def test_generator_that_cannot_be_built_leaves_no_plan(base: Path, tmp_path: Path) -> None:
    """A generator whose weights file is missing fails before the set's folder exists: no
    plan.json marks a set that was never generated."""
    c = Case(tmp_path, base)
    missing = tmp_path / "absent.ckpt"
    line = run_refused(
        "generate",
        c.generate(c.data(), "generator=lakered", f"generator.checkpoint={missing}"),
        tmp_path,
    )
    assert str(missing) in line
