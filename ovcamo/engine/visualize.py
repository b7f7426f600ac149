"""Figures of an evaluation: per-class cIoU bar chart and image / GT / prediction grids of the best
and worst samples (by class-aware IoU), drawn with :mod:`ovcamo.report`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ovcamo.data.io import prediction_path, read_gray
from ovcamo.data.ovcamo_format import DataPaths, resolve_records
from ovcamo.data.samples import load_sample


def _items(
    rows: Sequence[Mapping[str, Any]], pred_dir: Path, paths: DataPaths, split: str
) -> list[dict[str, Any]]:
    records = {r.unique_id: r for r in resolve_records(paths, split)[0]}
    items = []
    for row in rows:
        uid, pred_class = row["unique_id"], row["pred_class"]
        if uid not in records:
            # Scoring needs only GT masks; a sample whose image is absent has no grid cell.
            continue
        sample = load_sample(records[uid])
        items.append(
            {
                "image": sample["image"],
                "gt": sample["mask"],
                "pred": read_gray(prediction_path(pred_dir, pred_class, uid)),
                "gt_class": row["gt_class"],
                "pred_class": pred_class,
                "title": f"{uid} IoU {row['avgiou']:.2f}",
            }
        )
    return items


def write_eval_figures(
    results: Any,
    paths: DataPaths,
    out_dir: str | os.PathLike,
    *,
    n: int = 6,
) -> dict[str, Path]:
    """Write ``per_class_ciou.png``, ``best_samples.png`` and ``worst_samples.png`` to ``out_dir``.

    ``results``: an :class:`ovcamo.engine.evaluate.EvaluationResult` (its ``per_class``,
    ``per_sample`` rows, ``split`` and ``pred_dir``). Samples are ranked by their class-aware IoU
    (mean of the IoU curve; 0 when the class is wrong), ties broken by ``unique_id``.
    """
    from ovcamo.report.grids import prediction_grid
    from ovcamo.report.plots import per_class_bar

    out = Path(out_dir)
    pred_dir = Path(results.pred_dir)
    written = {
        "per_class": per_class_bar(
            results.per_class,
            out / "per_class_ciou.png",
            metric="avgiou",
            title=f"cIoU per class ({results.split} split, {results.num_samples} samples)",
        )
    }
    ranked = sorted(results.per_sample, key=lambda r: (-float(r["avgiou"]), r["unique_id"]))
    k = min(n, len(ranked))
    if k:
        for name, rows in (("best", ranked[:k]), ("worst", ranked[::-1][:k])):
            items = _items(rows, pred_dir, paths, results.split)
            if not items:
                continue
            written[name] = prediction_grid(
                items,
                out / f"{name}_samples.png",
                suptitle=f"{name} {k} samples by class-aware IoU",
            )
    return written


def validation_grid(
    model: Any,
    dataset: Any,
    class_names: Sequence[str],
    device: Any,
    path: str | os.PathLike,
    *,
    n: int = 4,
) -> Path | None:
    """Predict the first ``n`` samples of ``dataset`` (an :class:`ovcamo.data.OVCamoDataset` with
    its eval transform) and write image | GT | prediction as one PNG; ``None`` without samples.

    The loader has its own generator, so logging a grid never draws from the global RNG (whose
    state is part of a training run's exact-resume contract).
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from ovcamo.engine.predict import SkippingDataset, collate_eval, iter_predictions
    from ovcamo.report.grids import prediction_grid

    k = min(n, len(dataset))
    loader = DataLoader(
        SkippingDataset(dataset, range(k)),
        batch_size=max(k, 1),
        collate_fn=collate_eval,
        generator=torch.Generator(),
    )
    records = {r.unique_id: r for r in dataset.records[:k]}
    items = [
        {**item, "gt": np.asarray(item["gt"], bool), "image": load_sample(records[uid])["image"]}
        for item in iter_predictions(model, loader, class_names, device, progress=False)
        if (uid := item.get("unique_id")) is not None
    ]
    if not items:
        return None
    return prediction_grid(items, path, suptitle="validation predictions")
