"""The micro CLIP: an open_clip model trained contrastively on the micro-world's captions
(docs/design.md, "The micro-world").

It plays web-scale CLIP in the micro-world: it sees captioned salient renders of *every* class
(base and novel), while the segmenter later sees only base classes. Training uses open_clip's own
``ClipLoss``; the checkpoint is a safetensors state dict that
``open_clip.create_model("ovcamo_micro_convnext", pretrained=<path>)`` loads, the same call as for
ConvNeXt-L. Zero-shot accuracy over the novel classes is scored with the segmenter's class
embedding (:func:`ovcamo.models.camo_prompts.class_text_embeddings`, CamoPrompts ensembling).

Batches are built from groups of distinct classes, and the loss is the mean of ``ClipLoss`` over
the groups: with a few dozen classes a random batch holds many images of one class, whose captions
would act as false negatives for each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovcamo.checkpoint import save_weights
from ovcamo.data.io import atomic_write_json, read_image, read_mask
from ovcamo.data.ovcamo_format import DataPaths, class_names, load_class_info, resolve_records
from ovcamo.data.world import WEB_CAMOUFLAGED
from ovcamo.data.world_render import object_box

log = logging.getLogger(__name__)

#: Bumped when training or evaluation changes, so older cache entries are not reused.
MICRO_CLIP_VERSION = 2
CHECKPOINT_FILE = "micro_clip.safetensors"
REPORT_FILE = "report.json"
#: Keys every ``clip`` config node carries (defaults live in ``ovcamo/conf/micro_clip.yaml``).
CLIP_KEYS = (
    "model",
    "epochs",
    "batch_size",
    "group_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "seed",
    "augment",
    "train_size",
    "num_threads",
    "progress",
)
#: Keys that do not change the trained weights, left out of the cache hash.
_UNHASHED = ("num_threads", "progress")


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return json.loads(json.dumps(dict(cfg)))


def _check_clip_cfg(cfg: Mapping[str, Any]) -> None:
    missing = [k for k in CLIP_KEYS if k not in cfg]
    if missing:
        raise KeyError(
            f"clip config lacks {', '.join('clip.' + k for k in missing)} "
            "(see ovcamo/conf/micro_clip.yaml for a complete node)"
        )
    for key in ("epochs", "batch_size", "group_size"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ValueError(f"clip.{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["batch_size"] % cfg["group_size"]:
        raise ValueError(
            f"clip.batch_size ({cfg['batch_size']}) must be a multiple of clip.group_size "
            f"({cfg['group_size']})"
        )


# ---------------------------------------------------------------- data


def normalisation(model: torch.nn.Module) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (``3×1×1``) of the model's preprocessing."""
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(pp.get("mean", OPENAI_DATASET_MEAN)).view(3, 1, 1)
    std = torch.tensor(pp.get("std", OPENAI_DATASET_STD)).view(3, 1, 1)
    return mean, std


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def load_salient(world_root: Path, split: str) -> tuple[Tensor, list[str], list[str]]:
    """The captioned web set of one ``split`` (``train`` or ``val``): the salient renders, and
    for ``train`` also the framed camouflaged renders of base classes when the world has them.

    Returns images ``N×3×H×W`` uint8, captions and class names (length ``N`` each).
    """
    from ovcamo.data.io import safe_join

    folders = [world_root / "salient"]
    if split == "train" and (world_root / WEB_CAMOUFLAGED / "captions.json").is_file():
        folders.append(world_root / WEB_CAMOUFLAGED)
    images, captions, names = [], [], []
    for folder in folders:
        entries = json.loads((folder / "captions.json").read_text("utf-8"))
        entries = [e for e in entries if e["split"] == split]
        images.extend(read_image(safe_join(folder, e["image"])) for e in entries)
        captions.extend(e["caption"] for e in entries)
        names.extend(e["class_name"] for e in entries)
    if not images:
        raise ValueError(f"{world_root / 'salient' / 'captions.json'} has no {split!r} entries")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions, names


def camouflaged_crops(
    paths: DataPaths, size: int, margin: float = 0.25
) -> tuple[Tensor, list[str]]:
    """Square crops around each test-split object (mask bounding box plus ``margin`` per side).

    Returns images ``N×3×size×size`` uint8 and their class names.
    """
    records, _ = resolve_records(paths, "test", check_files="none")
    crops, names = [], []
    for r in records:
        image, mask = read_image(r.image_path), read_mask(r.mask_path)
        box = object_box(mask, margin)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        crop = torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1)[None].float()
        crops.append(_resize(crop, size).round().clamp(0, 255).to(torch.uint8)[0])
        names.append(r.class_name)
    return torch.stack(crops), names


def augment(
    images: Tensor, cfg: Mapping[str, Any], generator: torch.Generator, size: int | None = None
) -> Tensor:
    """Random resized crop, horizontal flip, brightness and contrast jitter on a uint8 batch.

    ``images``: ``B×3×H×W`` uint8; returns ``B×3×size×size`` (default ``H×W``) float in
    ``[0, 1]``. Hue is left alone: in the micro-world, as for real animals, colour is part of what
    a class looks like.
    """
    b, _, h, w = images.shape
    out_size = (size, size) if size else (h, w)
    x = images.float() / 255.0
    lo, hi = cfg["scale"]
    out = x.new_empty(b, 3, *out_size)
    r = torch.rand(b, 6, generator=generator)
    for i in range(b):
        area = lo + (hi - lo) * float(r[i, 0])
        side = max(8, int(round(math.sqrt(area) * min(h, w))))
        top = int(r[i, 1] * (h - side + 1))
        left = int(r[i, 2] * (w - side + 1))
        crop = x[i : i + 1, :, top : top + side, left : left + side]
        out[i] = F.interpolate(crop, size=out_size, mode="bilinear", antialias=True)[0]
        if cfg["hflip"] and r[i, 3] < 0.5:
            out[i] = out[i].flip(-1)
    bright = 1.0 + cfg["brightness"] * (2 * r[:, 4] - 1)
    contrast = 1.0 + cfg["contrast"] * (2 * r[:, 5] - 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast.view(b, 1, 1, 1) + mean
    return (out * bright.view(b, 1, 1, 1)).clamp(0.0, 1.0)


# ---------------------------------------------------------------- training


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # open_clip's recipe: no decay on gains, biases, embeddings' scale or the logit scale.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or "bn" in name or "ln" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def class_grouped_batches(
    labels: Sequence[int], batch_size: int, group_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of one batch: ``batch_size // group_size`` groups, each of distinct classes.

    Within a group every class appears at most once, so no two captions of a group describe the
    same class. With fewer classes than ``group_size``, groups shrink to the number of classes
    and there are more of them (``batch_size // n_classes``).
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    g = min(group_size, classes.size)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    out = []
    for _ in range(max(1, batch_size // g)):
        for c in rng.choice(classes, size=g, replace=False):
            out.append(rng.choice(by_class[c]))
    return np.array(out)


def train_contrastive(
    model: torch.nn.Module,
    tokenizer: Any,
    images: Tensor,
    captions: Sequence[str],
    labels: Sequence[int],
    cfg: Mapping[str, Any],
) -> list[float]:
    """Train ``model`` in place with open_clip's ``ClipLoss``; returns the loss of every step.

    ``images``: ``N×3×H×W`` uint8 at the model's input size; ``captions`` and ``labels`` (class
    indices) have length ``N``. AdamW, linear warm-up then cosine decay (open_clip's schedule).
    """
    from open_clip import ClipLoss
    from tqdm.auto import tqdm

    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    tokens = tokenizer(list(captions))
    mean, std = normalisation(model)
    loss_fn = ClipLoss()
    # Fused: the token embedding (49,408 × width) gets a dense update every step, which cost a
    # sixth of a step in the multi-tensor AdamW.
    optimiser = torch.optim.AdamW(
        _param_groups(model, cfg["weight_decay"]),
        lr=cfg["lr"],
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=True,
    )
    steps_per_epoch = max(1, math.ceil(len(captions) / cfg["batch_size"]))
    total = cfg["epochs"] * steps_per_epoch
    warmup = min(cfg["warmup_steps"], total - 1)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg["lr"] * (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * cfg["lr"] * (1 + math.cos(math.pi * t))

    g = min(cfg["group_size"], len(set(labels)))
    losses: list[float] = []
    model.train()
    bar = tqdm(range(total), desc="micro CLIP", unit="step", disable=not cfg["progress"])
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.from_numpy(
            class_grouped_batches(labels, cfg["batch_size"], cfg["group_size"], rng)
        )
        x = (augment(images[idx], cfg["augment"], gen, cfg["train_size"]) - mean) / std
        image_features, text_features, logit_scale = model(x, tokens[idx])
        loss = torch.stack(
            [
                loss_fn(image_features[i : i + g], text_features[i : i + g], logit_scale)
                for i in range(0, len(idx), g)
            ]
        ).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            # CLIP clamps the learned temperature at 100.
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.detach().item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


@torch.no_grad()
def zero_shot_top1(
    model: torch.nn.Module,
    tokenizer: Any,
    images: Tensor,
    labels: Sequence[str],
    candidates: Sequence[str],
    batch_size: int = 128,
) -> float:
    """Top-1 accuracy of CLIP zero-shot classification with CamoPrompts class embeddings.

    ``images``: ``N×3×H×W`` uint8 at the model's input size; ``labels``: the true class names;
    ``candidates``: the class names to choose among.
    """
    from ovcamo.models.camo_prompts import class_text_embeddings

    model.eval()
    text = class_text_embeddings(model, tokenizer, list(candidates))
    mean, std = normalisation(model)
    predictions = []
    for i in range(0, len(images), batch_size):
        x = (images[i : i + batch_size].float() / 255.0 - mean) / std
        feats = F.normalize(model.encode_image(x), dim=-1)
        predictions.extend((feats @ text.T).argmax(dim=1).tolist())
    truth = [list(candidates).index(n) for n in labels]
    return float(np.mean(np.array(predictions) == np.array(truth)))


# ---------------------------------------------------------------- cache and entry point


def micro_clip_hash(clip_cfg: Mapping[str, Any], world_hash: str) -> str:
    """Content hash naming a micro CLIP: the training config and the world it is trained on."""
    cfg = {k: v for k, v in _plain(clip_cfg).items() if k not in _UNHASHED}
    payload = {"version": MICRO_CLIP_VERSION, "clip": cfg, "world": world_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def train_micro_clip(
    clip_cfg: Mapping[str, Any], world_root: Path, out_dir: Path
) -> dict[str, Any]:
    """Train on the world at ``world_root``, write checkpoint and ``report.json`` into ``out_dir``."""
    import open_clip

    import ovcamo.models  # noqa: F401  (registers the micro architecture with open_clip)

    cfg = _plain(clip_cfg)
    _check_clip_cfg(cfg)
    if cfg["num_threads"]:
        torch.set_num_threads(int(cfg["num_threads"]))
    torch.manual_seed(cfg["seed"])
    model = open_clip.create_model(cfg["model"], pretrained=None)
    tokenizer = open_clip.get_tokenizer(cfg["model"])
    size = int(
        model.visual.image_size[0]
        if isinstance(model.visual.image_size, (tuple, list))
        else model.visual.image_size
    )

    paths = DataPaths.from_paths_json(world_root / "paths.json")
    classes = load_class_info(paths.class_info)
    all_names = [c.name for c in sorted(classes, key=lambda c: c.id)]
    novel = class_names(classes, "test")

    images, captions, names = load_salient(world_root, "train")
    labels = [all_names.index(n) for n in names]
    start, cpu_start = time.perf_counter(), time.process_time()
    losses = train_contrastive(model, tokenizer, _resize(images, size), captions, labels, cfg)
    train_seconds = time.perf_counter() - start
    # CPU time of all threads: with the wall time it shows how much a busy machine slowed training.
    train_cpu_seconds = time.process_time() - cpu_start

    val_images, _, val_names = load_salient(world_root, "val")
    keep = [i for i, n in enumerate(val_names) if n in novel]
    salient_top1 = zero_shot_top1(
        model, tokenizer, _resize(val_images[keep], size), [val_names[i] for i in keep], novel
    )
    crops, crop_names = camouflaged_crops(paths, size)
    camo_top1 = zero_shot_top1(model, tokenizer, crops, crop_names, novel)

    checkpoint = out_dir / CHECKPOINT_FILE
    save_weights(checkpoint, model.state_dict())
    steps_per_epoch = len(losses) // cfg["epochs"]
    report = {
        "zero_shot_top1_salient": salient_top1,
        "zero_shot_top1_camouflaged": camo_top1,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "checkpoint": CHECKPOINT_FILE,
        "model": cfg["model"],
        "novel_classes": novel,
        "n_train_images": len(captions),
        "n_eval_salient": len(keep),
        "n_eval_camouflaged": len(crop_names),
        "steps": len(losses),
        "loss_first_epoch": float(np.mean(losses[:steps_per_epoch])),
        "loss_last_epoch": float(np.mean(losses[-steps_per_epoch:])),
        "torch_threads": torch.get_num_threads(),
        "config": cfg,
    }
    atomic_write_json(out_dir / REPORT_FILE, report)
    return report


def ensure_micro_clip(
    clip_cfg: Mapping[str, Any],
    world_cfg: Mapping[str, Any],
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Train the micro CLIP for a world, or find it in the cache; return the checkpoint path.

    The folder ``<cache>/micro_clip/<model>-<hash[:16]>`` (hash of the clip config and the world's
    content hash) holds ``micro_clip.safetensors`` and ``report.json``; it is trained in a
    temporary sibling and renamed into place only when complete.
    """
    from ovcamo.data.world import default_cache_dir, ensure_world, publish_dir, resolve_world

    cfg = _plain(clip_cfg)
    _check_clip_cfg(cfg)
    spec = resolve_world(world_cfg)
    digest = micro_clip_hash(cfg, spec.config_hash)
    final = default_cache_dir(cache_dir) / "micro_clip" / f"{cfg['model']}-{digest[:16]}"
    if (final / CHECKPOINT_FILE).is_file():
        return final / CHECKPOINT_FILE
    world_root = ensure_world(world_cfg, cache_dir=cache_dir, progress=cfg["progress"])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        report = train_micro_clip(cfg, world_root, tmp)
        atomic_write_json(tmp / "world.json", {"world_dir": str(world_root), "hash": digest})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, final)
    log.info(
        "micro CLIP trained in %.0f s: zero-shot top-1 %.3f salient, %.3f camouflaged -> %s",
        report["train_seconds"],
        report["zero_shot_top1_salient"],
        report["zero_shot_top1_camouflaged"],
        final,
    )
    return final / CHECKPOINT_FILE


def main(cfg: Mapping[str, Any]) -> Path | None:
    """``ovcamo-micro-clip``: train (or reuse) the micro CLIP of ``cfg.world`` with ``cfg.clip``;
    copy (``link=true``: symlink) its folder to ``cfg.out_dir`` when set; print the report and
    return the checkpoint path. ``check=true`` validates ``cfg.clip`` and ``cfg.world``, says
    whether the model is cached or would be trained, writes nothing and returns ``None``."""
    from ovcamo.data.world import WorldConfigError, default_cache_dir, export_dir, resolve_world

    if cfg.get("check"):
        clip = _plain(cfg["clip"])
        try:
            _check_clip_cfg(clip)
        except (KeyError, ValueError) as e:
            raise WorldConfigError(str(e).strip("'\"")) from e
        spec = resolve_world(cfg["world"])
        digest = micro_clip_hash(clip, spec.config_hash)
        folder = (
            default_cache_dir(cfg.get("cache_dir"))
            / "micro_clip"
            / f"{clip['model']}-{digest[:16]}"
        )
        state = "cached at" if (folder / CHECKPOINT_FILE).is_file() else "would be trained into"
        print(
            f"ovcamo-micro-clip: check passed: micro CLIP of world {spec.name!r} {state} {folder}; "
            "nothing written (check=true)"
        )
        return None

    checkpoint = ensure_micro_clip(cfg["clip"], cfg["world"], cfg.get("cache_dir"))
    if cfg.get("out_dir"):
        folder = export_dir(
            checkpoint.parent,
            cfg["out_dir"],
            "micro CLIP",
            identity=("world.json", "hash"),
            link=bool(cfg.get("link", False)),
        )
        checkpoint = folder / CHECKPOINT_FILE
    report = json.loads((checkpoint.parent / REPORT_FILE).read_text("utf-8"))
    summary = {
        k: report[k]
        for k in ("zero_shot_top1_salient", "zero_shot_top1_camouflaged", "train_seconds")
    }
    print(json.dumps({**summary, "checkpoint": str(checkpoint)}, indent=2))
    return checkpoint
