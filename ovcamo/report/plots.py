"""Bar charts of per-class and per-group metrics for the reports."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovcamo.report.figure import new_figure, save_figure

CLASS_KEYS = ("class", "class_name", "name", "base_class", "gt_class")


def class_key(rows: Sequence[Mapping[str, Any]]) -> str:
    """The key under which ``rows`` name their class (the first of :data:`CLASS_KEYS` present)."""
    if not rows:
        raise ValueError("no rows to plot")
    for key in CLASS_KEYS:
        if key in rows[0]:
            return key
    raise KeyError(f"rows name no class: expected one of {CLASS_KEYS}, got keys {sorted(rows[0])}")


def metric_value(row: Mapping[str, Any], metric: str) -> float:
    """``row[metric]`` as a float, with an error naming the row's keys when it is missing."""
    if metric not in row:
        raise KeyError(f"metric {metric!r} missing from a row with keys {sorted(row)}")
    return float(row[metric])


def per_class_bar(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    metric: str = "cIoU",
    *,
    title: str | None = None,
    highlight: Sequence[str] = (),
    labels: tuple[str, str] = ("highlighted", "other"),
    sort: bool = True,
) -> Path:
    """Horizontal bar chart of ``metric`` per class, one bar per row, written as a PNG.

    ``rows`` are per-class dicts (a class-name key such as ``class`` plus metric keys, e.g. the rows
    of a ``per_class.csv``); classes named in ``highlight`` (e.g. the rare or hard classes) are drawn
    in a second colour, with ``labels`` naming the two colours in the legend. Sorted best-first
    unless ``sort=False``.
    """
    key = class_key(rows)
    items = [(str(r[key]), metric_value(r, metric)) for r in rows]
    if sort:
        items.sort(key=lambda kv: (-kv[1] if math.isfinite(kv[1]) else math.inf, kv[0]))
    marked = set(highlight)
    names = [n for n, _ in items]
    values = [v for _, v in items]
    colors = ["#d95f02" if n in marked else "#1b9e77" for n in names]

    fig = new_figure(7.0, max(1.6, 0.28 * len(items) + 0.9))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(items))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    lo = min(0.0, min(values, default=0.0))
    hi = max(1.0, max(values, default=1.0))
    ax.set_xlim(lo, hi)
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=7)
    if marked:
        ax.legend(
            handles=[
                _patch("#d95f02", labels[0]),
                _patch("#1b9e77", labels[1]),
            ],
            fontsize=7,
            loc="lower right",
        )
    ax.set_title(title or f"{metric} per class", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def grouped_bar(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    errors: Mapping[str, Sequence[float]] | None = None,
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Grouped vertical bars: one group per entry of ``groups``, one bar per series.

    ``series[name][i]`` is the height of series ``name`` in group ``i``; ``errors`` (same shape)
    draws ± error bars, e.g. the standard deviation over seeds.
    """
    n_series = len(series)
    if n_series == 0:
        raise ValueError("no series to plot")
    for name, values in series.items():
        if len(values) != len(groups):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(groups)} groups")
    width = 0.8 / n_series
    x = np.arange(len(groups))
    fig = new_figure(max(4.0, 1.3 * len(groups) * n_series / 2 + 2), 3.2)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, values) in enumerate(series.items()):
        err = None if errors is None else errors.get(name)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, values, width, yerr=err, capsize=3, label=name)
        for p, v in zip(pos, values, strict=True):
            ax.text(p, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, list(groups))
    top = max((max(v, default=0.0) for v in series.values()), default=1.0)
    ax.set_ylim(0.0, max(top * 1.25, 1e-3))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncols=n_series, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _patch(color: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)
