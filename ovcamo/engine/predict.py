"""Predictions in the official OVCOS format and class-aware scoring of a model (docs/evaluation.md).

A prediction is the mask logit map post-processed by ``to_uint8_prediction`` (sigmoid → per-image
min-max → bilinear to GT size → uint8) and the argmax over the candidate classes; files are
written as ``[<pred class>]<unique_id>.png``. Candidate classes are the split's own classes: the
base classes for base validation, the novel classes for the test split.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ovcamo.checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    check_checkpoint_files,
    load_state,
    resolve_checkpoint_dir,
)
from ovcamo.data.io import prediction_path, staged_dir, write_png
from ovcamo.data.ovcamo_format import DataPaths
from ovcamo.data.transforms import EvalTransform
from ovcamo.engine.distributed import DistInfo

log = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "config.json"


class SkippingDataset(Dataset):
    """Wraps a map-style dataset; a sample that fails to load becomes ``{"skipped", "error"}``."""

    def __init__(self, dataset: Any, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        try:
            return self.dataset[index]
        except (OSError, ValueError, SyntaxError) as e:
            uid = self.dataset.records[index].unique_id
            return {"skipped": uid, "error": f"{type(e).__name__}: {e}"}


def collate_eval(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (``B×3×S×S``); keep GT masks (bool ``H×W``, sizes differ) and metadata as lists."""
    good = [s for s in samples if "skipped" not in s]
    return {
        "image": torch.stack([s["image"] for s in good]) if good else None,
        "mask": [s["mask"] for s in good],
        "class_name": [s["class_name"] for s in good],
        "unique_id": [s["unique_id"] for s in good],
        "skipped": [(s["skipped"], s["error"]) for s in samples if "skipped" in s],
    }


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp == "bf16"``; a no-op elsewhere (CPU runs stay in fp32)."""
    if amp == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if amp not in (None, "none", "bf16"):
        raise ValueError(f"amp must be 'bf16' or 'none', got {amp!r}")
    return contextlib.nullcontext()


@torch.no_grad()
def iter_predictions(
    model: torch.nn.Module,
    loader: DataLoader,
    class_names: Sequence[str],
    device: torch.device,
    *,
    amp: str | None = None,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "predict",
) -> Iterator[dict[str, Any]]:
    """Yield, per sample: ``unique_id``, ``gt_class``, ``pred_class``, ``pred`` (uint8 ``H×W`` at GT
    size), ``gt`` (bool ``H×W``); skipped samples yield ``{"skipped": uid, "error": msg}``."""
    from ovcamo.metrics.postprocess import to_uint8_prediction

    names = list(class_names)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            for uid, err in batch["skipped"]:
                yield {"skipped": uid, "error": err}
            if batch["image"] is None:
                continue
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out = model(images, names)
            logits = out["mask_logits"].float().cpu()
            pred_idx = out["class_logits"].float().argmax(dim=1).cpu().tolist()
            for i, uid in enumerate(batch["unique_id"]):
                gt = batch["mask"][i]
                yield {
                    "unique_id": uid,
                    "gt_class": batch["class_name"][i],
                    "pred_class": names[pred_idx[i]],
                    "pred": to_uint8_prediction(logits[i, 0], tuple(gt.shape)),
                    "gt": gt,
                }
    finally:
        model.train(was_training)


def eval_loader(
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int,
    dist: DistInfo | None = None,
) -> DataLoader:
    """A loader over this rank's shard (``rank::world_size``, no padding, so no sample counts twice)."""
    indices = list(range(len(dataset)))
    if dist is not None and dist.distributed:
        indices = indices[dist.rank :: dist.world_size]
    return DataLoader(
        SkippingDataset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_eval,
        pin_memory=dist is not None and dist.device.type == "cuda",
    )


def evaluate_model(
    model: torch.nn.Module,
    dataset: Any,
    class_names: Sequence[str],
    *,
    dist: DistInfo,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: str | None = None,
    channels_last: bool = False,
    progress: bool = True,
    strict: bool = False,
) -> tuple[dict[str, float], Any, list[str]]:
    """Score ``model`` on ``dataset`` with the class-aware OVCOS metrics, synced across ranks.

    Returns ``(metrics, metric object, skipped unique_ids of this rank)``; every rank gets the
    same metrics (the metric's per-sample states are gathered before ``compute``).
    """
    from ovcamo.metrics import OVCOSMetric

    metric = OVCOSMetric()
    skipped: list[str] = []
    loader = eval_loader(dataset, batch_size=batch_size, num_workers=num_workers, dist=dist)
    for item in iter_predictions(
        model,
        loader,
        class_names,
        dist.device,
        amp=amp,
        channels_last=channels_last,
        progress=progress and dist.is_main,
        desc="validate",
    ):
        if "skipped" in item:
            if strict:
                raise SampleReadError(item["skipped"], item["error"])
            log.warning("skipped sample %s: %s", item["skipped"], item["error"])
            skipped.append(item["skipped"])
            continue
        metric.update(
            item["pred"], item["gt"], item["pred_class"], item["gt_class"], item["unique_id"]
        )
    return {k: float(v) for k, v in metric.compute().items()}, metric, skipped


class SampleReadError(RuntimeError):
    """A sample could not be read and ``data.strict`` is set."""

    def __init__(self, unique_id: str, error: str):
        super().__init__(
            f"sample {unique_id!r} could not be read ({error}); data.strict=true stops the run "
            "(set data.strict=false to skip and count such samples)"
        )


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder ``path`` names: itself, or a run folder's ``checkpoints/best``
    (else ``checkpoints/last``)."""
    path = Path(path).expanduser()
    for candidate in (path, path / "checkpoints" / "best", path / "checkpoints" / "last"):
        found = resolve_checkpoint_dir(candidate)
        if found is not None and (found / MODEL_CONFIG_FILE).is_file():
            check_checkpoint_files(found)
            return found
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected {WEIGHTS_FILE}, state.pt and {MODEL_CONFIG_FILE} "
        "there or in its checkpoints/best or checkpoints/last (written by ovcamo-train)"
    )


def load_trained_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a training checkpoint was made with and load its trained weights.

    Returns ``(model in eval mode, model config)``; the frozen backbone comes from its
    ``pretrained`` entry, the rest from the checkpoint's ``model.safetensors``.
    """
    from ovcamo.models import load_model

    directory = find_checkpoint(checkpoint)
    # Training builds the model right after seeding torch with the run's seed; doing the same
    # here rebuilds the identical frozen backbone even when it is randomly initialised
    # (backbone.pretrained=null), whose weights the checkpoint does not store.
    seed = int(load_state(directory / STATE_FILE).get("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = load_model(directory, map_location=str(device))
        except KeyError as e:
            raise CheckpointError(
                f"{directory / MODEL_CONFIG_FILE} lacks a key the model needs ({e}); it is damaged "
                "or was not written by ovcamo-train: restore the folder from a copy"
            ) from e
    model_cfg = json.loads((directory / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    return model.eval(), model_cfg


def predict_to_dir(cfg: Any, split: str = "test", part: str = "all") -> Path:
    """Write ``[<pred class>]<unique_id>.png`` for every sample of ``split``/``part``.

    ``cfg.checkpoint``: a checkpoint folder or a run folder; ``cfg.data``: the dataset;
    ``cfg.out_dir``: predictions go to ``<out_dir>/predictions`` (``predictions_<part>`` for a
    part of the train split). Candidate classes are the split's classes. Returns the folder.
    Optional keys: ``device`` (auto), ``batch_size`` (8), ``num_workers`` (0), ``amp``.
    """
    from ovcamo.data import OVCamoDataset
    from ovcamo.data.config import resolve_data_paths
    from ovcamo.engine.distributed import pick_device

    if not cfg.get("checkpoint"):
        raise KeyError("predict_to_dir needs cfg.checkpoint (a checkpoint or run folder)")
    device = pick_device(str(cfg.get("device", "auto")))
    model, model_cfg = load_trained_model(cfg.checkpoint, device)
    paths: DataPaths = resolve_data_paths(cfg.data, cfg.get("cache_dir"))
    dataset = OVCamoDataset(
        paths,
        split,
        part=part,
        holdout_fraction=float(cfg.data.get("holdout_fraction", 0.0)) if part != "all" else 0.0,
        holdout_seed=int(cfg.data.get("holdout_seed", 0)),
        transform=EvalTransform(int(model_cfg["backbone"]["image_size"])),
        strict=bool(cfg.data.get("strict", False)),
    )
    out = Path(cfg.out_dir) / ("predictions" if part == "all" else f"predictions_{part}")
    loader = eval_loader(
        dataset,
        batch_size=int(cfg.get("batch_size", 8)),
        num_workers=int(cfg.get("num_workers", 0)),
    )
    written = skipped = 0
    # A fresh folder swapped in at the end: files of an earlier run (possibly with other predicted
    # classes in their names) never mix with these, and a killed run leaves the old folder whole.
    with staged_dir(out) as tmp:
        for item in iter_predictions(
            model, loader, dataset.class_names, device, amp=cfg.get("amp"), desc=f"predict {split}"
        ):
            if "skipped" in item:
                log.warning("skipped sample %s: %s", item["skipped"], item["error"])
                skipped += 1
                continue
            write_png(prediction_path(tmp, item["pred_class"], item["unique_id"]), item["pred"])
            written += 1
    log.info("wrote %d predictions to %s (%d samples skipped)", written, out, skipped)
    return out
