"""Names from data files (class names, sample ids) never build a path outside their folder: the
one checked join (:func:`ovcamo.data.io.safe_join`), the class-name rule at load, and every
console script run for real with a traversal payload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _engine_data import write_tiny_checkpoint, write_tiny_dataset
from test_engine_resume import tiny_overrides

from ovcamo.data import DataPaths
from ovcamo.data.io import PathEscapeError, prediction_path, safe_join, write_png
from ovcamo.data.ovcamo_format import DatasetFormatError, load_class_info
from ovcamo.data.world import PACKAGED_CLASS_LIST

PAYLOAD = "../../../pwned"


def test_flat_join_refuses_every_separator(tmp_path: Path) -> None:
    assert prediction_path(tmp_path, "snow leopard", "000001_snow leopard") == (
        tmp_path.resolve() / "[snow leopard]000001_snow leopard.png"
    )
    for cls, uid in ((PAYLOAD, "1"), ("a/b", "1"), ("a\\b", "1"), ("owl", "x/../../y")):
        with pytest.raises(PathEscapeError, match="refusing"):
            prediction_path(tmp_path, cls, uid)
    # The plain join keeps relative paths inside the root (sample_info's image names).
    assert safe_join(tmp_path, "a/b.png") == tmp_path.resolve() / "a" / "b.png"
    with pytest.raises(PathEscapeError):
        safe_join(tmp_path, "b.png/..", flat=True)


@pytest.mark.parametrize("name", [PAYLOAD, "a/b", "back\\slash", "..", "nul\x00"])
def test_class_names_that_would_be_paths_are_refused_at_load(tmp_path: Path, name: str) -> None:
    entries = [{"name": "owl", "id": 0, "split": "train"}, {"name": name, "id": 1, "split": "test"}]
    path = tmp_path / "class_info.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="class names become parts of file names"):
        load_class_info(path)


def _poisoned_dataset(root: Path) -> Path:
    """A tiny dataset whose class list also names a test class :data:`PAYLOAD` (no samples)."""
    write_tiny_dataset(root, size=32)
    path = root / "class_info.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    entries.append({"name": PAYLOAD, "id": 99, "split": "test", "super_class": "animal"})
    path.write_text(json.dumps(entries), encoding="utf-8")
    return root


def _poisoned_class_list(tmp_path: Path) -> Path:
    entries = json.loads(PACKAGED_CLASS_LIST.read_text(encoding="utf-8"))
    entries[-1]["name"] = PAYLOAD
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best")


def _args(command: str, tmp_path: Path, checkpoint: Path, out: Path) -> list[str]:
    if command in ("world", "micro-clip"):
        return [f"world.class_list={_poisoned_class_list(tmp_path)}", f"out_dir={out}"]
    if command == "loop":
        return [f"data.world.class_list={_poisoned_class_list(tmp_path)}", f"out_dir={out}"]
    if command == "predict":
        image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        write_png(tmp_path / "images" / "a.png", image)
        return [
            f"checkpoint={checkpoint}",
            f"images={tmp_path / 'images'}",
            f"classes=[owl,'{PAYLOAD}']",
            "format=ovcamo",
            f"out_dir={out}",
        ]
    data = _poisoned_dataset(tmp_path / "data")
    if command == "train":
        return tiny_overrides(data, out)
    data_keys = [
        f"data.{k}={v}" for k, v in DataPaths.from_paths_json(data / "paths.json").to_json().items()
    ]
    if command == "eval":
        return [f"checkpoint={checkpoint}", *data_keys, f"out_dir={out}", "figures=false"]
    return ["data=ovcamo", *data_keys, "generator=classic", f"out_dir={out}"]  # generate


@pytest.mark.parametrize(
    "command", ["eval", "predict", "train", "generate", "world", "micro-clip", "loop"]
)
def test_every_command_refuses_a_traversal_payload(
    command: str, tmp_path: Path, checkpoint: Path
) -> None:
    out = tmp_path / "out"
    args = _args(command, tmp_path, checkpoint, out)
    before = _files(tmp_path.parent)
    done = subprocess.run(
        [sys.executable, "-m", "ovcamo", command, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "file names" in done.stderr and "pwned" in done.stderr, done.stderr
    written = _files(tmp_path.parent) - before
    assert not [p for p in written if "pwned" in p.name], written
    assert all(out in p.parents for p in written), written
