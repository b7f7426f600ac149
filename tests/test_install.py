"""What an install provides: the plain install scores and renders without the extras, a missing
extra is one line naming it, the tests write nothing under the home folder, and a run records the
code and library versions that produced it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _engine_data import write_tiny_dataset
from conftest import SANDBOX
from generation_data import write_dataset
from hydra import compose, initialize_config_dir
from light_env import SOURCE_ROOT, light_site, run_light
from test_engine_resume import tiny_overrides

from ovcamo import CONF_DIR, provenance
from ovcamo.data import load_sample_info
from ovcamo.engine.stage_cache import StageCache
from ovcamo.extras import OPTIONAL_MODULES, install_command

# ---------------------------------------------------------------- extras


def test_every_optional_module_belongs_to_its_extra_in_the_metadata():
    """``ovcamo/extras.py`` and the installed metadata (pyproject.toml) name the same extras."""
    requires = importlib.metadata.requires("ovcamo") or []
    base = {re.split(r"[<>=;\[ ]", r)[0].lower() for r in requires if "extra ==" not in r}
    for distribution, extra in OPTIONAL_MODULES.values():
        assert distribution.lower() not in base, f"{distribution} must not be a base dependency"
        assert any(
            r.lower().startswith(distribution.lower()) and f'extra == "{extra}"' in r
            for r in requires
        ), f"{distribution} is not in the {extra!r} extra"
    for extra in ("all", "dev"):
        assert any(f'extra == "{extra}"' in r for r in requires)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("install") / "data", size=16)


def _blocked(*modules: str) -> str:
    """Python that makes importing ``modules`` fail as if they were not installed."""
    return "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        (("open_clip",), ["train"], "model"),
        (("wandb",), ["train", "logger=wandb"], "wandb"),
        (("diffusers",), ["generate", "generator=lakered_micro"], "gen"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(tiny, tmp_path, blocked, args, extra):
    command, *rest = args
    if command == "generate":
        paths = json.loads(write_dataset(tmp_path / "ds", size=32).read_text())
        data = [f"data.{k}={tmp_path / 'ds' / v}" for k, v in paths.items()]
        data += ["data.holdout_fraction=0", f"out_dir={tmp_path / 'set'}", "device=cpu"]
    else:
        data = tiny_overrides(tiny, tmp_path / "run")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _blocked(*blocked) + "from ovcamo.__main__ import main; main()",
            command,
            *data,
            *rest,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"ovcamo-{command}: ") and install_command(extra) in lines[0]


# ---------------------------------------------------------------- the plain install


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> Path:
    return light_site(tmp_path_factory.mktemp("light") / "site")


def test_the_light_environment_lacks_every_extra(light, tmp_path):
    code = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {sorted(OPTIONAL_MODULES)!r} "
        "if importlib.util.find_spec(m) is not None]))"
    )
    proc = run_light(light, code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_plain_install_scores_predictions_and_renders_the_world(light, tiny, tmp_path):
    # Perfect predictions: every test GT mask under its own class.
    preds = tmp_path / "preds"
    preds.mkdir()
    for s in load_sample_info(tiny / "sample_info.json"):
        gt = tiny / "test" / "mask" / s.mask
        if gt.is_file():
            shutil.copy(gt, preds / f"[{s.base_class}]{s.unique_id}.png")
    keys = [o for o in tiny_overrides(tiny, tmp_path) if o.startswith("data.")]
    run = "from ovcamo.__main__ import main; main()"
    proc = run_light(
        light, run, "eval", f"pred_dir={preds}", *keys, f"out_dir={tmp_path / 'eval'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result["num_samples"] == 6 and result["diagnostics"]["class_accuracy"] == 1.0
    assert result["metrics"]["maxiou"] == 1.0 and result["metrics"]["cMAE"] == 0.0
    assert result["metrics"]["cSm"] == pytest.approx(1.0)

    env = dict(os.environ, OVCAMO_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "world"
    proc = run_light(light, run, "world", "world=tiny", f"out_dir={out}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "class_info.json").is_file() and (out / "train" / "image").is_dir()

    proc = run_light(light, run, "train", *tiny_overrides(tiny, tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2
    assert install_command("model") in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the tests' own sandbox


def test_the_suite_writes_under_a_temporary_home(monkeypatch):
    from ovcamo.data.world import default_cache_dir

    assert Path.home().is_relative_to(SANDBOX)
    for variable in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME", "WANDB_DIR"):
        assert Path(os.environ[variable]).is_relative_to(SANDBOX)
    # Without OVCAMO_CACHE the toolkit's default is ${HOME}/.cache/ovcamo: inside the sandbox.
    monkeypatch.delenv("OVCAMO_CACHE")
    assert default_cache_dir(None).is_relative_to(SANDBOX)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("loop")
    assert Path(cfg.cache_dir).is_relative_to(SANDBOX)


# ---------------------------------------------------------------- provenance


def test_code_version_follows_the_source_files(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (package / "notes.txt").write_text("not code")
    monkeypatch.setattr(provenance, "_package_dirs", lambda: [package])
    provenance.code_digest.cache_clear()
    first = provenance.code_version()
    (package / "notes.txt").write_text("still not code")
    provenance.code_digest.cache_clear()
    assert provenance.code_version() == first
    (package / "a.py").write_text("x = 2\n")
    provenance.code_digest.cache_clear()
    assert provenance.code_version() != first
    assert first.startswith(f"{provenance.ovcamo.__version__}+")
    provenance.code_digest.cache_clear()


def test_a_stage_made_by_other_code_is_not_reused(tmp_path, monkeypatch):
    import ovcamo.engine.stage_cache as stage_cache

    cache = StageCache(tmp_path)
    make = lambda d: {"n": 1}  # noqa: E731
    monkeypatch.setattr(stage_cache, "code_version", lambda: "0.1.0+aaaa")
    assert cache.run("s", "kind", {"x": 1}, make).status == "ran"
    assert cache.run("s", "kind", {"x": 1}, make).status == "cached"
    monkeypatch.setattr(stage_cache, "code_version", lambda: "0.1.0+bbbb")
    record = cache.run("s", "kind", {"x": 1}, make)
    assert record.status == "ran"
    marker = json.loads((record.directory / stage_cache.MARKER).read_text())
    assert marker["code_version"] == "0.1.0+bbbb"


def test_provenance_names_the_commit_and_the_libraries():
    info = provenance.provenance()
    assert info["libraries"]["torch"] == importlib.metadata.version("torch")
    assert set(info["libraries"]) == set(provenance.LIBRARIES)
    assert re.fullmatch(r"\d+\.\d+\.\d+\+[0-9a-f]{12}", info["code_version"])
    if (SOURCE_ROOT / ".git").exists() and shutil.which("git"):
        head = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert info["git_commit"] == head and isinstance(info["git_dirty"], bool)
