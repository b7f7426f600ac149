"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ovcamo"
CLASS_INFO = SHARED_DATA / "class_info.json"

# Under pytest-xdist each worker gets one core of the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_class_info() -> Path:
    """The real OVCamo class list (75 classes), kept beside the repository in shared/."""
    if not CLASS_INFO.is_file():
        pytest.fail(f"the real OVCamo class list is expected at {CLASS_INFO}")
    return CLASS_INFO


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the toolkit's cache at a per-session temporary folder."""
    monkeypatch.setenv("OVCAMO_CACHE", str(tmp_path_factory.getbasetemp() / "ovcamo-cache"))
