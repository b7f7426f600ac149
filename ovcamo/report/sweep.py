"""One table for a Hydra sweep of ``ovcamo-loop``: a row per job and run, the swept values first."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ovcamo.data.io import atomic_write_text
from ovcamo.report.loop_report import read_metrics
from ovcamo.report.tables import SIX_METRICS, Spread, markdown_table

try:
    from hydra.experimental.callback import Callback
except ImportError:  # hydra is a dependency; the guard keeps this module importable without it
    Callback = object  # type: ignore[assignment,misc]

_EVAL = re.compile(r"^eval/(?P<variant>[^/]+)/seed(?P<seed>\d+)$")


def _jobs(sweep_dir: Path) -> list[Path]:
    jobs = [p.parent for p in sweep_dir.glob("*/loop.json")]
    return sorted(
        jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in OmegaConf.load(path)]


def sweep_rows(sweep_dir: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: job, the overrides that differ between jobs, run, six metrics (novel)."""
    jobs = _jobs(Path(sweep_dir))
    if not jobs:
        raise FileNotFoundError(f"no finished loop job (*/loop.json) under {sweep_dir}")
    overrides = {job: _overrides(job) for job in jobs}
    everywhere = set.intersection(*(set(o) for o in overrides.values()))
    rows = []
    for job in jobs:
        outputs = json.loads((job / "loop.json").read_text(encoding="utf-8"))["outputs"]
        per_variant: dict[str, list[dict[str, float]]] = {}
        for name in sorted(outputs):
            match = _EVAL.match(name)
            if match:
                per_variant.setdefault(match["variant"], []).append(
                    read_metrics(outputs[name]["novel"])
                )
        swept = " ".join(o for o in overrides[job] if o not in everywhere) or "(defaults)"
        # The baseline first, then the run with synthetic data, then anything else by name.
        order = sorted(per_variant, key=lambda v: ({"without": 0, "with": 1}.get(v, 2), v))
        for variant in order:
            metrics = per_variant[variant]
            rows.append(
                [
                    job.name,
                    swept,
                    variant,
                    len(metrics),
                    *(Spread.of([m[k] for m in metrics]).format() for k in SIX_METRICS),
                ]
            )
    return ["job", "overrides", "run", "seeds", *SIX_METRICS.values()], rows


def write_sweep_summary(sweep_dir: str | os.PathLike) -> Path:
    """Write ``sweep.md`` into the sweep folder: novel-class metrics, mean ± std over seeds."""
    headers, rows = sweep_rows(sweep_dir)
    text = (
        "# ovcamo-loop sweep\n\n"
        "Novel classes (official OVCOS protocol), mean ± std over seeds; each job's report.md has "
        "the base-validation, planner and timing sections.\n\n"
        + markdown_table(headers, rows, align="lllr" + "r" * len(SIX_METRICS))
    )
    out = Path(sweep_dir) / "sweep.md"
    atomic_write_text(out, text)
    return out


class SweepSummary(Callback):
    """Hydra callback: after a multirun of ``ovcamo-loop``, write ``sweep.md`` in the sweep folder."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if any(sweep_dir.glob("*/loop.json")):
            print(f"sweep summary: {write_sweep_summary(sweep_dir)}")
