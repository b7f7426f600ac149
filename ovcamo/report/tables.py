"""Markdown tables of the OVCOS metrics: the paper's six-metric table, mean ± spread over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The paper's table (BaCLIP, CVPR 2026, Tab. 1): key in the metric dict -> column header.
SIX_METRICS: dict[str, str] = {
    "cSm": "cSm ↑",
    "cFwb": "cFωβ ↑",
    "cMAE": "cMAE ↓",
    "cFb": "cFβ ↑",
    "cEm": "cEm ↑",
    "cIoU": "cIoU ↑",
}
LOWER_IS_BETTER = frozenset({"cMAE", "mae"})


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
) -> str:
    """A GitHub-flavoured markdown table; ``align`` is one of ``l``/``r``/``c`` per column."""
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} does not match {len(headers)} headers")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "|" + "|".join(marks[a] for a in align) + "|",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells for {len(headers)} headers")
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one quantity over seeds (``std`` is nan for one seed)."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        vals = tuple(float(v) for v in values)
        if not vals:
            raise ValueError("no values to summarise")
        std = statistics.stdev(vals) if len(vals) >= 2 else math.nan
        return cls(statistics.fmean(vals), std, len(vals), vals)

    def format(self, digits: int = 3, signed: bool = False) -> str:
        sign = "+" if signed else ""
        mean = f"{self.mean:{sign}.{digits}f}"
        return mean if math.isnan(self.std) else f"{mean} ± {self.std:.{digits}f}"

    @property
    def within_spread(self) -> bool | None:
        """For a paired difference: is it indistinguishable from zero at this seed count?

        True when the seeds disagree in sign or the mean is no larger than one standard deviation;
        None with a single seed (no spread to judge by).
        """
        if self.n < 2:
            return None
        signs = {math.copysign(1.0, v) for v in self.values if v != 0.0}
        return len(signs) != 1 or abs(self.mean) <= self.std


def metric_rows(
    runs: Mapping[str, Sequence[Mapping[str, float]]], metrics: Mapping[str, str] = SIX_METRICS
) -> list[list[str]]:
    """One row per run name: each metric as mean ± std over the run's seeds."""
    rows = []
    for name, per_seed in runs.items():
        cells = [name]
        for key in metrics:
            cells.append(Spread.of([_get(m, key) for m in per_seed]).format())
        rows.append(cells)
    return rows


def paired_difference(
    treated: Sequence[Mapping[str, float]],
    control: Sequence[Mapping[str, float]],
    key: str,
) -> Spread:
    """``treated − control`` per seed (runs paired by position, i.e. by seed), summarised."""
    if len(treated) != len(control):
        raise ValueError(
            f"{len(treated)} treated runs cannot pair with {len(control)} control runs"
        )
    return Spread.of([_get(t, key) - _get(c, key) for t, c in zip(treated, control, strict=True)])


def six_metric_table(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    difference: tuple[str, str] | None = None,
    metrics: Mapping[str, str] = SIX_METRICS,
) -> str:
    """The paper's six-metric table, one row per run (mean ± std over seeds).

    ``difference=(treated, control)`` adds a row of paired per-seed differences ``treated − control``.
    """
    rows = metric_rows(runs, metrics)
    if difference is not None:
        treated, control = difference
        row = [f"Δ ({treated} − {control})"]
        for key in metrics:
            row.append(paired_difference(runs[treated], runs[control], key).format(signed=True))
        rows.append(row)
    return markdown_table(["run", *metrics.values()], rows)


def _get(metrics: Mapping[str, float], key: str) -> float:
    if key not in metrics:
        raise KeyError(f"metric {key!r} missing; available: {sorted(metrics)}")
    return float(metrics[key])
