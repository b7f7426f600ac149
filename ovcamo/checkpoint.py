"""Atomic checkpoints: weights in safetensors, the rest (optimiser, scheduler, RNG, position) in a
``weights_only``-loadable torch file. Shared by the training engine and the generators' trainers."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from ovcamo.data.io import atomic_write_bytes, atomic_write_json

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
_DAMAGED = (
    "it is damaged (a copy cut short?) or was not written by ovcamo: restore the folder from a "
    "copy, or train again into a new out_dir"
)


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be loaded safely: damaged, or not written by ovcamo."""


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, atomically (shared tensors are cloned apart)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors))


def load_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); {_DAMAGED}") from e


def check_checkpoint_files(directory: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming the first file of a checkpoint folder that cannot be
    read: a ``*.safetensors`` file whose header does not cover the file (cut short, or not
    safetensors; only headers are read) or a ``config.json`` that is not a JSON object."""
    directory = Path(directory)
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({e}); {_DAMAGED}"
            ) from e
    config = directory / CONFIG_FILE
    if config.is_file():
        try:
            parsed = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{config} is not valid JSON ({e}); {_DAMAGED}") from e
        if not isinstance(parsed, dict):
            raise CheckpointError(f"{config} holds no JSON object (the model config); {_DAMAGED}")


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write training state (plain containers of tensors, numbers and strings), atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch_file(path: str | os.PathLike, what: str = "a training state") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings and plain containers.

    A file holding anything else, or one that cannot be read, raises :class:`CheckpointError`
    naming ``path``; the message never advises unpickling (running code from the file).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the first object it refused as "GLOBAL module.Name".
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        first = f" ({found.group(1)} first)" if found else ""
        raise CheckpointError(
            f"{path} is not a safe checkpoint: it holds Python objects{first} beyond tensors, "
            "numbers, strings and plain containers, which only unpickling (running code from the "
            "file) could restore, and ovcamo never unpickles. Use a file written by this version "
            "of ovcamo (or the official release of the weights); to keep a file you trust, load "
            "it in its own program and re-save only its tensors with "
            "safetensors.torch.save_file"
        ) from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable torch file ({str(e).split('. ')[0]}); it is damaged (a copy "
            f"cut short?) or not {what}: restore it from a copy"
        ) from e


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training state saved by :func:`save_state` (see :func:`load_torch_file`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file not found: {path}")
    return load_torch_file(path)


def save_checkpoint(
    directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    state: dict[str, Any],
    extra_json: dict[str, Any] | None = None,
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
    linked: dict[str, Path] | None = None,
) -> None:
    """Write ``model.safetensors``, ``state.pt`` (and ``<name>`` for each ``extra_json`` and
    ``extra_weights`` entry, the latter as safetensors) into ``directory`` as one atomic step.
    Each ``linked`` entry ``<name>: file`` is a hard link to an existing file (a copy where the file
    system has no links) instead of a write: a frozen part an earlier checkpoint already holds.

    Files go to a fresh sibling folder which then replaces ``directory`` by two renames; a kill at
    any moment leaves either the old or the new checkpoint complete, possibly under
    ``<directory>.old`` (which :func:`resolve_checkpoint_dir` finds).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_weights(tmp / WEIGHTS_FILE, state_dict)
        for name, tensors in (extra_weights or {}).items():
            save_weights(tmp / name, tensors)
        for name, source in (linked or {}).items():
            try:
                os.link(source, tmp / name)
            except OSError:
                shutil.copyfile(source, tmp / name)
        for name, obj in (extra_json or {}).items():
            atomic_write_json(tmp / name, obj)
        save_state(tmp / STATE_FILE, state)
        old = directory.with_name(directory.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_checkpoint_dir(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint at ``directory``, or at ``<directory>.old`` when a kill interrupted
    the swap in :func:`save_checkpoint`; ``None`` when neither holds one."""
    directory = Path(directory)
    for d in (directory, directory.with_name(directory.name + ".old")):
        if (d / STATE_FILE).is_file() and (d / WEIGHTS_FILE).is_file():
            return d
    return None


def load_checkpoint(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and state of the checkpoint at ``directory`` (see :func:`resolve_checkpoint_dir`)."""
    found = resolve_checkpoint_dir(directory)
    if found is None:
        raise FileNotFoundError(
            f"no complete checkpoint at {directory} (expected {WEIGHTS_FILE} and {STATE_FILE})"
        )
    check_checkpoint_files(found)
    return load_weights(found / WEIGHTS_FILE, device), load_state(found / STATE_FILE)
