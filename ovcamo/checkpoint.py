"""Atomic checkpoints: weights in safetensors, the rest (optimiser, scheduler, RNG, position) in a
``weights_only``-loadable torch file. Shared by the training engine and the generators' trainers."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from ovcamo.data.io import atomic_write_bytes

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"


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
    return load_file(str(path), device=str(device))


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write training state (plain containers of tensors, numbers and strings), atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"state file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(
    directory: str | os.PathLike, state_dict: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    """Write ``model.safetensors`` then ``state.pt`` into ``directory``.

    The state file is written last, so a directory whose ``state.pt`` exists always holds a
    complete checkpoint; readers check for it before trusting the weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS_FILE, state_dict)
    save_state(directory / STATE_FILE, state)


def load_checkpoint(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    directory = Path(directory)
    return load_weights(directory / WEIGHTS_FILE, device), load_state(directory / STATE_FILE)
