"""The six commands as one toolkit: ``out_dir=``, the data keys, readable errors (exit 2), a
``check=true`` that writes nothing, ``python -m ovcamo``, and the import rule (engine ↛ cli)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _engine_data import write_tiny_dataset
from generation_data import write_dataset
from hydra import compose, initialize_config_dir
from test_engine_resume import tiny_overrides

import ovcamo
from ovcamo import CONF_DIR
from ovcamo.cli import (
    COMMANDS,
    USER_ERRORS,
    evaluate,
    generate,
    prepare_arguments,
    train,
    world,
)

PACKAGE = Path(ovcamo.__file__).resolve().parent


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None, prelude: str = ""):
    """``python -c "<prelude>; python -m ovcamo"`` with ``args``: the commands as a user runs them."""
    code = f"{prelude}\nfrom ovcamo.__main__ import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_paragraph(stderr: str, prog: str) -> str:
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), stderr
    return lines[0]


# ---------------------------------------------------------------- bad overrides


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (train, ["trian.epochs=3"], ["no key 'trian.epochs'", "did you mean", "'train.epochs'"]),
        (train, ["train.epochz=3"], ["no key 'train.epochz'", "'train.epochs'"]),
        (train, ["model=nope"], ["model/nope", "choose one of", "baclip_micro"]),
        (train, ["+out_dir=x"], ["out_dir", "remove + prefix"]),
        (train, ["x=[1,"], ["cannot read the override 'x=[1,'"]),
        (evaluate, ["data.clas_info=a.json"], ["'data.clas_info'", "'data.class_info'"]),
        (world, ["data.class_info=a.json"], ["no key 'data.class_info'", "--cfg job"]),
        (generate, ["data=micro", "data.root=/d"], ["no key 'data.root'", "add data=ovcamo"]),
    ],
)
def test_a_bad_override_is_one_paragraph_and_exit_2(command, args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command(args)
    assert exit_info.value.code == 2
    line = _one_paragraph(capsys.readouterr().err, command.prog)
    for text in expected:
        assert text in line, line


def test_an_unresolvable_value_is_one_paragraph(tmp_path):
    proc = _run("loop", "out_dir=${nope}", "hydra.run.dir=" + str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_paragraph(proc.stderr, "ovcamo-loop")
    assert "out_dir" in line and "'nope' not found" in line


def test_python_dash_m_lists_the_commands(tmp_path):
    proc = _run(cwd=tmp_path)
    assert proc.returncode == 2
    assert all(name in proc.stderr for name in COMMANDS)


# ---------------------------------------------------------------- data keys, out_dir


def test_a_data_key_selects_the_ovcamo_data_config():
    for key in ("root", "class_info", "sample_info", "train_image_dir", "test_mask_dir"):
        assert prepare_arguments("generate", [f"data.{key}=x"])[-1] == "data=ovcamo"
        assert prepare_arguments("loop", [f"data.{key}=x"])[-1] == "data=ovcamo"
    # Not where the user chose the data config, not for keys both configs have, not without data.
    assert "data=ovcamo" not in prepare_arguments("generate", ["data=micro", "data.root=x"])
    assert "data=ovcamo" not in prepare_arguments("train", ["data.holdout_fraction=0.1"])
    assert "data=ovcamo" not in prepare_arguments("world", ["data.root=x"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_out_dir(name):
    command = COMMANDS[name]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(command.config_name, overrides=["out_dir=somewhere"])
    assert cfg.out_dir == "somewhere"


def test_generate_with_the_data_keys_and_out_dir(tmp_path):
    paths = json.loads(write_dataset(tmp_path / "ds", size=32).read_text())
    keys = [f"data.{k}={tmp_path / 'ds' / v}" for k, v in paths.items()]
    proc = _run(
        "generate",
        *keys,
        "data.holdout_fraction=0",
        f"out_dir={tmp_path / 'set'}",
        "progress=false",
        "device=cpu",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "set" / "summary.json").read_text())
    written = json.loads((tmp_path / "set" / "sample_info.json").read_text())
    assert summary["generator"] == "classic" and summary["skipped"] == 0
    assert summary["written"] == summary["planned"] == len(written) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "set"]  # nothing else written


def test_micro_clip_out_dir_exports_the_trained_folder(tmp_path, monkeypatch):
    from ovcamo.engine import micro_clip

    trained = tmp_path / "cache" / "micro_clip" / "m-1"
    trained.mkdir(parents=True)
    (trained / micro_clip.CHECKPOINT_FILE).write_bytes(b"weights")
    (trained / micro_clip.REPORT_FILE).write_text(
        json.dumps(
            {"zero_shot_top1_salient": 0.5, "zero_shot_top1_camouflaged": 0.25, "train_seconds": 1}
        )
    )
    (trained / "world.json").write_text(json.dumps({"hash": "abc"}))
    monkeypatch.setattr(
        micro_clip, "ensure_micro_clip", lambda *a: trained / micro_clip.CHECKPOINT_FILE
    )
    out = tmp_path / "out"
    cfg = {"clip": {}, "world": {}, "out_dir": str(out)}
    assert micro_clip.main(cfg) == out / micro_clip.CHECKPOINT_FILE
    assert (out / micro_clip.CHECKPOINT_FILE).read_bytes() == b"weights"
    assert micro_clip.main(cfg) == out / micro_clip.CHECKPOINT_FILE  # the same content: accepted
    (trained / "world.json").write_text(json.dumps({"hash": "other"}))
    with pytest.raises(FileExistsError, match="does not hold this micro CLIP"):
        micro_clip.main(cfg)


# ---------------------------------------------------------------- check=true


def test_check_writes_nothing_anywhere(tmp_path):
    """A single run (train) and a multirun (loop, whose jobs also run the train check)."""
    cwd, home, cache, out = (tmp_path / n for n in ("cwd", "home", "cache", "out"))
    cwd.mkdir()
    home.mkdir()
    env = dict(os.environ, HOME=str(home), OVCAMO_CACHE=str(cache))
    env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")  # matplotlib's own font cache
    for args in (["train", "check=true", f"out_dir={out}"], ["loop", "-m", "check=true"]):
        proc = _run(*args, cwd=cwd, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "check passed" in proc.stdout
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []
    assert not cache.exists() and not out.exists()


def test_a_failed_check_exits_2(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", size=16)
    (data / "sample_info.json").unlink()
    proc = _run("train", *tiny_overrides(data, tmp_path / "run"), "check=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert "sample_info" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_the_user_error_classes_exist():
    """The wrapper finds the toolkit's input errors by module and name: a rename must show here."""
    for module, names in USER_ERRORS.items():
        loaded = importlib.import_module(module)
        for name in names:
            assert issubclass(getattr(loaded, name), Exception), f"{module}.{name}"


# ---------------------------------------------------------------- imports


def test_the_package_never_imports_the_cli():
    """Entry points call the engine, never the reverse: no module of the package but the entry
    modules (``ovcamo-*`` and ``python -m ovcamo``, ``python -m generation.train``) imports
    ``ovcamo.cli``."""
    offenders = []
    for root in (PACKAGE, PACKAGE.parent / "generation"):
        for path in root.rglob("*.py"):
            if path in (PACKAGE / "cli.py", PACKAGE / "__main__.py", root / "train.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                if any(n == "ovcamo.cli" or n.startswith("ovcamo.cli.") for n in names):
                    offenders.append(str(path.relative_to(PACKAGE.parent)))
    assert offenders == []
