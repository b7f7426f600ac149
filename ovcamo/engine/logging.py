"""Run logging: always a local ``metrics.jsonl``; Weights & Biases when ``logger=wandb``.

``logger=jsonl`` (the default) writes the file and prints a line per epoch; ``logger=wandb``
also logs to wandb (``logger.mode: offline`` unless set to ``online``, which uses the user's key);
``logger=none`` writes only the file. Only rank 0 logs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Appends ``{"step": …, "time": …, **values}`` lines to ``<run_dir>/metrics.jsonl``.

    Lines are flushed and fsynced one at a time; a killed run leaves every finished line intact.
    A resumed run keeps appending, so the file may hold a step twice: readers take the last.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        cfg: Mapping[str, Any] | None = None,
        *,
        enabled: bool = True,
        run_config: Mapping[str, Any] | None = None,
        banner: str | None = None,
    ):
        cfg = dict(cfg or {})
        self.name = str(cfg.get("name", "jsonl"))
        if self.name not in ("jsonl", "wandb", "none"):
            raise KeyError(f"logger.name must be jsonl, wandb or none, got {self.name!r}")
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.echo = enabled and self.name != "none"
        self.banner = banner
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        if self.name == "wandb":
            import wandb

            mode = str(cfg.get("mode", "offline"))
            self._wandb = wandb.init(
                project=cfg.get("project", "ovcamo"),
                entity=cfg.get("entity"),
                name=cfg.get("run_name"),
                group=cfg.get("group"),
                tags=list(cfg.get("tags") or []) + (["outside-ov-protocol"] if banner else []),
                notes=banner,
                mode=mode,
                dir=str(Path(run_dir)),
                config=dict(run_config or {}),
                resume="allow",
                id=cfg.get("run_id"),
            )

    def log(self, values: Mapping[str, Any], step: int) -> None:
        if not self.enabled:
            return
        line = {"step": int(step), "time": time.time(), **{k: _plain(v) for k, v in values.items()}}
        if self.banner:
            line["outside_ov_protocol"] = True
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._wandb is not None:
            self._wandb.log({k: _plain(v) for k, v in values.items()}, step=int(step))

    def info(self, message: str) -> None:
        """A human-readable line on the console (above any progress bar), rank 0 only."""
        if self.echo:
            prefix = "[OUTSIDE OV PROTOCOL] " if self.banner else ""
            tqdm.write(prefix + message)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Lines of a ``metrics.jsonl``; a torn last line (killed mid-write) is ignored."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
