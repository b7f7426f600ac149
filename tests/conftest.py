"""Shared fixtures. Tests never touch the network, the user's home or the user's cache."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Before anything is imported that reads them (matplotlib, torch, hydra, wandb): HOME, the XDG
# folders and every cache this suite could reach point into one temporary folder, removed at
# exit. Subprocesses inherit them. The toolkit's default cache, ${HOME}/.cache/ovcamo, is in there
# too, so even a test that drops OVCAMO_CACHE writes nothing under the real home.
SANDBOX = Path(tempfile.mkdtemp(prefix="ovcamo-tests-"))
atexit.register(shutil.rmtree, SANDBOX, ignore_errors=True)
os.environ.update(
    HOME=str(SANDBOX / "home"),
    XDG_CACHE_HOME=str(SANDBOX / "home" / ".cache"),
    XDG_CONFIG_HOME=str(SANDBOX / "home" / ".config"),
    XDG_DATA_HOME=str(SANDBOX / "home" / ".local" / "share"),
    MPLCONFIGDIR=str(SANDBOX / "matplotlib"),
    TORCH_HOME=str(SANDBOX / "torch"),
    WANDB_DIR=str(SANDBOX / "wandb"),
    WANDB_CACHE_DIR=str(SANDBOX / "wandb-cache"),
    WANDB_CONFIG_DIR=str(SANDBOX / "wandb-config"),
    OVCAMO_CACHE=str(SANDBOX / "ovcamo-cache"),
)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
(SANDBOX / "home").mkdir()

import pytest  # noqa: E402
import torch  # noqa: E402

from ovcamo.data.world import PACKAGED_CLASS_LIST  # noqa: E402

# Under pytest-xdist each worker gets one core of the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_class_info() -> Path:
    """The real OVCamo class list (75 classes), as the package ships it."""
    return PACKAGED_CLASS_LIST


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the toolkit's cache at a per-session temporary folder."""
    monkeypatch.setenv("OVCAMO_CACHE", str(tmp_path_factory.getbasetemp() / "ovcamo-cache"))


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Give back the root logger as the test found it. A command run in-process configures
    logging (Hydra's job logging adds stream handlers bound to the test's captured streams); left
    in place, a later test's log record would be written to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
