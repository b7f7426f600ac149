"""Run logging: always a local ``metrics.jsonl``; Weights & Biases when ``logger=wandb``.

``logger=jsonl`` (the default) writes the file and prints a line per epoch; ``logger=wandb``
also logs to wandb (``logger.mode: offline`` unless set to ``online``, which uses the user's key):
the scalars, and at each validation the per-class table and a grid of predictions; the loop adds
one run holding its report as an artifact, and puts all runs of one loop in one group.
``logger=none`` writes only the file. Only rank 0 logs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def init_wandb(
    cfg: Mapping[str, Any],
    run_dir: str | os.PathLike,
    *,
    job_type: str,
    config: Mapping[str, Any] | None = None,
    banner: str | None = None,
) -> Any:
    """A wandb run as the ``logger`` node says (offline unless ``mode: online``), files in
    ``<run_dir>/wandb``."""
    import wandb

    return wandb.init(
        project=cfg.get("project", "ovcamo"),
        entity=cfg.get("entity"),
        name=cfg.get("run_name"),
        group=cfg.get("group"),
        job_type=job_type,
        tags=list(cfg.get("tags") or []) + (["outside-ov-protocol"] if banner else []),
        notes=banner,
        mode=str(cfg.get("mode", "offline")),
        dir=str(Path(run_dir)),
        config=dict(config or {}),
        resume="allow",
        id=cfg.get("run_id"),
    )


def wandb_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A ``wandb.Table`` of dict rows (the columns of the first row)."""
    import wandb

    columns = list(rows[0]) if rows else []
    return wandb.Table(columns=columns, data=[[_plain(r.get(c)) for c in columns] for r in rows])


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
        job_type: str = "train",
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
            self._wandb = init_wandb(
                cfg, run_dir, job_type=job_type, config=run_config, banner=banner
            )

    @property
    def media(self) -> bool:
        """Whether tables and images go anywhere (``logger=wandb``, on the main rank)."""
        return self._wandb is not None

    def log_media(
        self,
        step: int,
        *,
        tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        images: Mapping[str, str | os.PathLike] | None = None,
    ) -> None:
        """Per-class tables (dict rows) and PNG files to wandb; nothing without ``logger=wandb``."""
        if self._wandb is None:
            return
        import wandb

        values = {k: wandb_table(rows) for k, rows in (tables or {}).items()}
        values |= {k: wandb.Image(str(path)) for k, path in (images or {}).items()}
        if values:
            self._wandb.log(values, step=int(step))

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


def log_loop_report(
    cfg: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    group: str,
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    files: Sequence[str | os.PathLike],
    config: Mapping[str, Any] | None = None,
) -> None:
    """With ``logger=wandb``: one run (job type ``loop-report``) in the loop's ``group`` with the
    per-class ``tables``, every PNG of ``files`` as an image and all ``files`` as one artifact
    (type ``loop-report``). Nothing for another logger."""
    if str(cfg.get("name")) != "wandb":
        return
    import wandb

    out = Path(out_dir)
    run = init_wandb(
        {**cfg, "group": group, "run_name": cfg.get("run_name") or f"report {out.name}"},
        out,
        job_type="loop-report",
        config=config,
    )
    try:
        values = {k: wandb_table(rows) for k, rows in tables.items()}
        values |= {
            f"report/{Path(f).stem}": wandb.Image(str(f)) for f in files if Path(f).suffix == ".png"
        }
        run.log(values)
        artifact = wandb.Artifact(f"{group}-report", type="loop-report")
        for f in files:
            artifact.add_file(str(f))
        run.log_artifact(artifact)
    finally:
        run.finish()
