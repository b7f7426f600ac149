"""Image grids for reports: generated samples and predictions beside their ground truth
(docs/design.md, "Engine, loop, reports")."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovcamo.report.figure import new_figure, save_figure

CORRECT = "#1a9850"
WRONG = "#d73027"
OUTLINE = "#ffdd00"


def _as_display(array: np.ndarray, what: str) -> np.ndarray:
    """A uint8 ``H×W×3`` view of an RGB, grey, bool or float image for ``imshow``."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{what}: expected uint8, bool or float, got {a.dtype}")
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected H×W or H×W×3, got shape {a.shape}")
    return a[..., :3]


def _outline(ax: Any, mask: np.ndarray) -> None:
    m = np.asarray(mask).astype(np.float32)
    if m.max(initial=0) > 0 and m.min(initial=1) < 1:
        ax.contour(m, levels=[0.5], colors=[OUTLINE], linewidths=0.8)


def _blank(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _image_and_gt_cells(
    fig: Any, grid: tuple[int, int], index: int, item: Mapping[str, Any], gt: np.ndarray, what: str
) -> None:
    """Draw ``item``'s image (titled with its ``title``) in cell ``index`` of the ``(rows, cols)``
    ``grid`` and its bool GT mask ``gt`` (titled with its class) in the next cell."""
    ax = fig.add_subplot(*grid, index)
    ax.imshow(_as_display(item["image"], f"{what} image"), interpolation="nearest")
    ax.set_title(str(item.get("title", "")), fontsize=7)
    _blank(ax)
    ax = fig.add_subplot(*grid, index + 1)
    ax.imshow(gt, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"GT: {item['gt_class']}", fontsize=7)
    _blank(ax)


def _prediction_cell(
    fig: Any,
    grid: tuple[int, int],
    index: int,
    pred: np.ndarray,
    gt: np.ndarray,
    label: str,
    correct: bool,
) -> None:
    """Draw a uint8 prediction map with the GT outlined, its caption green when the class is right
    and red when it is wrong."""
    ax = fig.add_subplot(*grid, index)
    ax.imshow(pred, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    _outline(ax, gt)
    ax.set_title(label, fontsize=7, color=CORRECT if correct else WRONG)
    _blank(ax)


def image_grid(
    images: Sequence[np.ndarray],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    ncols: int = 6,
    cell: float = 1.6,
    suptitle: str | None = None,
) -> Path:
    """Write a grid of images as one PNG.

    ``images``: uint8 ``H×W×3`` (or ``H×W`` grey / bool / float in [0, 1]); sizes may differ.
    ``masks`` (bool ``H×W``, optional per image) are drawn as outlines on their image;
    ``titles`` label the cells.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(masks)} masks for {len(images)} images")
    ncols = max(1, min(ncols, len(images)))
    nrows = math.ceil(len(images) / ncols)
    fig = new_figure(cell * ncols, (cell + (0.25 if titles else 0.0)) * nrows)
    for i, image in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(_as_display(image, f"image {i}"), interpolation="nearest")
        if masks is not None and masks[i] is not None:
            _outline(ax, masks[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
        _blank(ax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def prediction_grid(
    items: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    per_row: int = 2,
    cell: float = 1.6,
    suptitle: str | None = None,
) -> Path:
    """Write predictions beside their ground truth as one PNG: image | GT | prediction per item.

    Each item holds ``image`` (uint8 ``H×W×3``), ``gt`` (bool ``H×W``), ``pred`` (uint8 ``H×W``, the
    official prediction map), ``gt_class`` and ``pred_class`` (str), and optionally ``title``. The
    prediction's caption is green when the predicted class is right and red when it is wrong, since
    the class-aware metrics score a wrong class as an empty mask.
    """
    if not items:
        raise ValueError("prediction_grid needs at least one item")
    for i, item in enumerate(items):
        missing = [k for k in ("image", "gt", "pred", "gt_class", "pred_class") if k not in item]
        if missing:
            raise KeyError(f"prediction_grid item {i} lacks {missing}")
    per_row = max(1, min(per_row, len(items)))
    nrows = math.ceil(len(items) / per_row)
    ncols = 3 * per_row
    grid = (nrows, ncols)
    fig = new_figure(cell * ncols, (cell + 0.45) * nrows)
    for i, item in enumerate(items):
        row, slot = divmod(i, per_row)
        base = row * ncols + 3 * slot
        gt = np.asarray(item["gt"]).astype(bool)
        pred = np.asarray(item["pred"])
        if pred.shape[:2] != gt.shape:
            raise ValueError(
                f"prediction_grid item {i}: prediction {pred.shape[:2]} and GT {gt.shape} differ in size"
            )
        correct = str(item["pred_class"]) == str(item["gt_class"])
        _image_and_gt_cells(fig, grid, base + 1, item, gt, f"item {i}")
        _prediction_cell(fig, grid, base + 3, pred, gt, f"pred: {item['pred_class']}", correct)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def comparison_grid(
    items: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    cell: float = 1.6,
    suptitle: str | None = None,
) -> Path:
    """Several runs' predictions of the same samples as one PNG: image | GT | one column per run.

    Each item holds ``image`` (uint8 ``H×W×3``), ``gt`` (bool ``H×W``), ``gt_class``, optionally
    ``title``, and ``preds``: run name → ``{"pred": uint8 H×W, "pred_class": str}``, with the same
    run names in every item. Captions are green for a right class and red for a wrong one.
    """
    if not items:
        raise ValueError("comparison_grid needs at least one item")
    runs = list(items[0]["preds"])
    for i, item in enumerate(items):
        if list(item["preds"]) != runs:
            raise KeyError(f"comparison_grid item {i} has runs {list(item['preds'])}, not {runs}")
    ncols = 2 + len(runs)
    grid = (len(items), ncols)
    fig = new_figure(cell * ncols, (cell + 0.45) * len(items))
    for row, item in enumerate(items):
        gt = np.asarray(item["gt"]).astype(bool)
        _image_and_gt_cells(fig, grid, row * ncols + 1, item, gt, f"item {row}")
        for j, run in enumerate(runs):
            pred = np.asarray(item["preds"][run]["pred"])
            if pred.shape[:2] != gt.shape:
                raise ValueError(
                    f"comparison_grid item {row}, run {run!r}: prediction {pred.shape[:2]} and "
                    f"GT {gt.shape} differ in size"
                )
            pred_class = str(item["preds"][run]["pred_class"])
            correct = pred_class == str(item["gt_class"])
            _prediction_cell(
                fig, grid, row * ncols + 3 + j, pred, gt, f"{run}: {pred_class}", correct
            )
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)
