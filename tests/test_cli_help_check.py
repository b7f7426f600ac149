"""Every command's ``--help`` shows its own config groups and keys; every command takes
``check=true``, which validates and writes nothing (run as a user runs them: subprocesses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _engine_data import write_tiny_checkpoint, write_tiny_dataset
from PIL import Image

from ovcamo.cli import COMMANDS, config_groups, evaluate, generate

# ---------------------------------------------------------------- --help


def _help(command, capsys) -> str:
    command(["--help"])
    return capsys.readouterr().out


def test_eval_help_shows_its_own_keys(capsys):
    text = _help(evaluate, capsys)
    assert text.startswith("ovcamo-eval: ")
    for key in ("pred_dir=null", "gt_dir=null", "check=false", "data=ovcamo", "Hydra flags:"):
        assert key in text, key
    assert "generator" not in text and "planner" not in text


def test_generate_help_shows_the_generator(capsys):
    text = _help(generate, capsys)
    assert "generator=classic" in text and "lakered_micro" in text
    assert "pred_dir" not in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_exactly_the_command_s_groups(name, capsys):
    command = COMMANDS[name]
    text = _help(command, capsys)
    section = (
        text.split("Config groups (group=option):\n")[1].split("\n\n")[0]
        if ("Config groups" in text)
        else ""
    )
    listed = {line.split("=")[0].strip() for line in section.splitlines()}
    assert listed == set(config_groups(command.config_name)) - {"hydra/job_logging"}
    assert f"Usage: {command.prog}" in text and "check=false" in text


def test_help_as_a_process_exits_0_without_hydra_s_group_list(tmp_path):
    proc = _run("eval", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pred_dir=null" in proc.stdout
    # Hydra's default help lists every group of the config folder, e.g. the generators.
    assert "== Config groups ==" not in proc.stdout and "generator" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- check=true


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ovcamo", *args],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset, its GT masks as predictions, a random-weight checkpoint and one image."""
    root = tmp_path_factory.mktemp("inputs")
    data = write_tiny_dataset(root / "data", size=16)
    preds = root / "preds"
    preds.mkdir()
    cls = {"000018": "frog", "000019": "frog", "000020": "frog"}
    for mask in sorted((data / "test" / "mask").glob("*.png")):
        name = cls.get(mask.stem[:6], "crab")
        shutil.copy(mask, preds / f"[{name}]{mask.name}")
    plain = root / "plain"
    plain.mkdir()
    for mask in sorted((data / "test" / "mask").glob("*.png")):
        shutil.copy(mask, plain / mask.name)
    checkpoint = write_tiny_checkpoint(root / "ckpt")
    image = root / "photo.png"
    Image.new("RGB", (20, 16), (90, 120, 40)).save(image)
    return {"data": data, "preds": preds, "plain": plain, "ckpt": checkpoint, "image": image}


def _check_args(name: str, inputs: dict[str, Path], out: Path) -> list[str]:
    data = inputs["data"]
    return {
        "world": [f"out_dir={out}"],
        "micro-clip": [f"out_dir={out}"],
        "train": [f"out_dir={out}"],
        "eval": [f"data.root={data}", f"pred_dir={inputs['preds']}", f"out_dir={out}"],
        "predict": [
            f"checkpoint={inputs['ckpt']}",
            f"images={inputs['image']}",
            "classes=[frog,crab]",
            f"out_dir={out}",
        ],
        "generate": [f"out_dir={out}"],
        "loop": [f"out_dir={out}"],
        "demo": [f"checkpoint={inputs['ckpt']}", f"out_dir={out}"],
    }[name]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_check_validates_and_writes_nothing(name, inputs, tmp_path):
    cwd, home, cache, out = (tmp_path / n for n in ("cwd", "home", "cache", "out"))
    cwd.mkdir()
    home.mkdir()
    env = dict(os.environ, HOME=str(home), OVCAMO_CACHE=str(cache), OMP_NUM_THREADS="1")
    env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")
    proc = _run(name, "check=true", *_check_args(name, inputs, out), cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "check passed" in proc.stdout
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []
    assert not cache.exists() and not out.exists()


def test_eval_check_of_a_class_agnostic_set(inputs, tmp_path):
    out = tmp_path / "out"
    args = [f"pred_dir={inputs['plain']}", f"gt_dir={inputs['data'] / 'test' / 'mask'}"]
    proc = _run("eval", "check=true", *args, f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "6 predictions" in proc.stdout and not out.exists()


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("world", ["world.test_count=0"], "test_count"),
        ("eval", ["pred_dir=/nonexistent/preds"], "/nonexistent/preds"),
    ],
)
def test_a_failed_check_exits_2(name, args, expected, inputs, tmp_path):
    extra = [f"data.root={inputs['data']}"] if name == "eval" else []
    proc = _run(name, "check=true", *extra, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
