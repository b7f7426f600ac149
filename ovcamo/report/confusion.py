"""Confusion matrix of predicted against GT class: counts, CSV and markdown tables, a heat map.

Rows are GT classes, columns predicted classes, both in one label order: the given class order
restricted to the classes that occur on either side, so a predicted class outside the split
(a base class named for a novel sample) gets its own column. numpy only; the heat map imports
matplotlib when it is drawn.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """``counts[i, j]``: samples of GT class ``labels[i]`` predicted as ``labels[j]``; int64
    ``(L, L)``."""

    labels: list[str]
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def accuracy(self) -> float:
        """Share of samples on the diagonal (nan without samples)."""
        return float(np.trace(self.counts) / self.total) if self.total else float("nan")

    def __add__(self, other: Confusion) -> Confusion:
        """Counts of both, over the union of their labels (this one's order first)."""
        labels = self.labels + [c for c in other.labels if c not in self.labels]
        return Confusion(labels, _embed(self, labels) + _embed(other, labels))

    def top_confusions(self, n: int = 5) -> list[tuple[str, str, int, float]]:
        """The ``n`` largest off-diagonal cells as ``(gt, predicted, count, share of the GT
        class's samples)``, largest first, ties by label order."""
        cells = [
            (-int(self.counts[i, j]), i, j)
            for i in range(len(self.labels))
            for j in range(len(self.labels))
            if i != j and self.counts[i, j] > 0
        ]
        row_sums = self.counts.sum(axis=1)
        return [
            (self.labels[i], self.labels[j], -c, -c / int(row_sums[i]))
            for c, i, j in sorted(cells)[:n]
        ]


def _embed(conf: Confusion, labels: Sequence[str]) -> np.ndarray:
    index = [labels.index(c) for c in conf.labels]
    out = np.zeros((len(labels), len(labels)), np.int64)
    out[np.ix_(index, index)] = conf.counts
    return out


def confusion_matrix(
    pairs: Iterable[tuple[str, str]], class_order: Sequence[str] | None = None
) -> Confusion:
    """Count ``(gt_class, pred_class)`` pairs.

    ``class_order``: the label order (e.g. the dataset's classes by id); classes that occur but are
    not in it follow, sorted. Only classes that occur on either side are labels.
    """
    pairs = list(pairs)
    seen = {c for pair in pairs for c in pair}
    order = [c for c in (class_order or ()) if c in seen]
    labels = order + sorted(seen - set(order))
    index = {c: i for i, c in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), np.int64)
    for gt, pred in pairs:
        counts[index[gt], index[pred]] += 1
    return Confusion(labels, counts)


def confusion_csv(conf: Confusion) -> str:
    """The matrix as CSV: a ``gt \\ predicted`` header row of labels, one row per GT class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["gt \\ predicted", *conf.labels])
    for label, row in zip(conf.labels, conf.counts, strict=True):
        writer.writerow([label, *(int(v) for v in row)])
    return buf.getvalue()


def confusion_markdown(conf: Confusion) -> str:
    """The matrix as a markdown table (GT classes as rows, a dot for an empty cell)."""
    lines = [
        "| GT \\ predicted | " + " | ".join(conf.labels) + " |",
        "|:--|" + "---:|" * len(conf.labels),
    ]
    for label, row in zip(conf.labels, conf.counts, strict=True):
        cells = (str(int(v)) if v else "·" for v in row)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def top_confusions_markdown(confusions: dict[str, Confusion], n: int = 5) -> str:
    """The ``n`` most frequent confusions of each named matrix as one markdown table."""
    lines = [
        "| run | GT class | predicted as | samples | share of the GT class |",
        "|:--|:--|:--|---:|---:|",
    ]
    for name, conf in confusions.items():
        top = conf.top_confusions(n)
        if not top:
            lines.append(f"| {name} | — | — | 0 | — |")
        for gt, pred, count, share in top:
            lines.append(f"| {name} | {gt} | {pred} | {count} | {share:.0%} |")
    return "\n".join(lines) + "\n"


def confusion_heatmap(conf: Confusion, path: str | os.PathLike, title: str = "") -> Path:
    """Draw the matrix as a PNG heat map (row-normalised colour, counts written in the cells)."""
    from ovcamo.report.figure import new_figure, save_figure

    n = len(conf.labels)
    rows = conf.counts.sum(axis=1, keepdims=True)
    share = np.divide(conf.counts, rows, out=np.zeros(conf.counts.shape), where=rows > 0)
    side = min(24.0, max(3.5, 0.32 * n + 2.0))
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(n)
    font = 8 if n <= 20 else 5
    ax.set_xticks(ticks, conf.labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, conf.labels, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("GT class")
    if n <= 30:
        for i, j in zip(*np.nonzero(conf.counts), strict=True):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(conf.counts[i, j]), ha="center", va="center", fontsize=font, c=colour)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the GT class")
    ax.set_title(title or f"Predicted vs GT class ({conf.total} samples)", fontsize=10)
    return save_figure(fig, path)
