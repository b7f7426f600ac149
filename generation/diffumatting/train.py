"""DiffuMatting training step (ECCV 2024; docs/design.md, "Generation"): noise + green-background
control + detail + latent matting losses on green-canvas images, and the loop that trains them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from generation.diffumatting.model import (
    GreenAttentionStore,
    MattingHead,
    decoder_feature_channels,
    decoder_features,
    detail_loss,
    green_background_loss,
    install_green_probe,
    matting_loss,
)
from generation.sd.micro import TrainingPairs, green_canvas, holdout_of, load_pairs
from generation.sd.parts import SDParts
from generation.sd.prompts import Captions, word_token_positions
from generation.sd.training import (
    RunOptions,
    Trainable,
    TrainHistory,
    add_noise,
    encode_latents,
    fit,
)
from ovcamo.checkpoint import save_weights
from ovcamo.data import DataPaths
from ovcamo.data.io import read_image, read_mask, safe_join

#: The matting head's file inside a DiffuMatting folder.
HEAD_FILE = "matting_head.safetensors"

#: DiffuMatting's training stages, in order: the generator first, then generator and matting
#: head together.
STAGES = ("generation", "joint")


@dataclass
class LossWeights:
    """λ of each DiffuMatting loss term (the noise loss has weight 1); Eq. 10 sums all four
    with weight 1."""

    green: float = 1.0
    detail: float = 1.0
    matting: float = 1.0


@dataclass
class DiffuMattingBatch:
    """Green-canvas images ``B×3×H×W`` in [−1, 1], masks ``B×1×H×W``, prompt embeddings
    ``B×L×D`` and, per row, the token positions of the green word(s)."""

    images: torch.Tensor
    masks: torch.Tensor
    prompt_embeds: torch.Tensor
    green_positions: list[list[int]]


def diffumatting_step(
    unet: UNet2DConditionModel,
    head: MattingHead,
    vae: AutoencoderKL,
    scheduler: DDPMScheduler,
    store: GreenAttentionStore,
    batch: DiffuMattingBatch,
    weights: LossWeights,
    generator: torch.Generator | None = None,
    matting: bool = True,
) -> dict[str, torch.Tensor]:
    """One DiffuMatting training step; returns every loss term and their weighted ``total``.

    The VAE is frozen: z₀ is its scaled posterior sample, and the matting head reads the decoder
    features of z₀ (no gradient into the decoder), trained against the mask with L1 + Dice; with
    ``matting=False`` (the generation stage) that term is left out. ``store`` must be installed
    on ``unet`` (:func:`install_green_probe`).
    """
    z0 = encode_latents(vae, batch.images, generator)
    noised = add_noise(scheduler, z0, generator)
    store.reset(batch.green_positions, tuple(z0.shape[-2:]))
    out = unet(noised.zt, noised.t, encoder_hidden_states=batch.prompt_embeds).sample
    losses = {"noise": noised.loss(out)}
    rows = torch.tensor([bool(p) for p in batch.green_positions], device=batch.masks.device)
    losses["green"] = green_background_loss(store.maps, batch.masks, rows)
    losses["detail"] = detail_loss(noised.x0(out), z0, batch.masks)
    total = losses["noise"] + weights.green * losses["green"] + weights.detail * losses["detail"]
    if matting:
        with torch.no_grad(), decoder_features(vae) as feats:
            vae.decode(z0 / vae.config.scaling_factor)
        losses["matting"] = matting_loss(head(feats[-1]), batch.masks)
        total = total + weights.matting * losses["matting"]
    losses["total"] = total
    return losses


def train_diffumatting(
    parts: SDParts,
    head: MattingHead,
    store: GreenAttentionStore,
    pairs: TrainingPairs,
    train_cfg: Mapping[str, Any],
    run: RunOptions | None = None,
) -> TrainHistory:
    """Train ``parts.unet`` and ``head`` on green canvases of ``pairs`` with the prompt template
    ``train_cfg.prompt`` filled by each class name, in the paper's two stages (:data:`STAGES`):
    ``generation`` trains the UNet with the noise, green-background and detail losses while the
    matting head waits; ``joint`` then trains the UNet and the head together with all four.

    ``train_cfg`` keys: ``stages`` (steps of each stage), ``batch_size``, ``lr``, ``prompt``,
    ``green_words``, ``weights`` (``green``, ``detail``, ``matting``), ``seed``,
    and optionally ``head_lr`` (the matting head's learning rate, ``lr`` by default) and
    ``uncond_prob`` (prompt dropout for the sampler's classifier-free guidance; a dropped row has
    no green token, so the green loss skips it), and the loop's keys (:class:`LoopSettings`).
    ``store`` must be installed on the UNet; ``run`` gives the checkpoint folder (one subfolder
    per stage), the log and the progress bar.
    """
    device = parts.unet.device
    prompts = [str(train_cfg["prompt"]).format(c) for c in pairs.class_names]
    captions = Captions.for_training(parts, prompts, train_cfg)
    positions = word_token_positions(parts.tokenizer, captions.ids, list(train_cfg["green_words"]))
    if not all(positions):
        raise ValueError(
            f"the green word(s) {list(train_cfg['green_words'])} do not occur in the prompt "
            f"template {train_cfg['prompt']!r}"
        )
    stages = dict(train_cfg["stages"])
    if set(stages) != set(STAGES):
        raise ValueError(f"train.stages must give the steps of {STAGES}, got {sorted(stages)}")
    weights = LossWeights(**dict(train_cfg.get("weights", {})))
    scheduler = parts.noise_scheduler()

    def step(idx: torch.Tensor, g: torch.Generator, matting: bool) -> dict[str, torch.Tensor]:
        images, masks = pairs.batch(idx)
        embeds, kept = captions.batch(idx, g)
        batch = DiffuMattingBatch(
            green_canvas(images, masks).to(device),
            masks.to(device),
            embeds,
            [positions[i] if k else [] for i, k in zip(idx.tolist(), kept.tolist(), strict=True)],
        )
        return diffumatting_step(
            parts.unet, head, parts.vae, scheduler, store, batch, weights, g, matting
        )

    lr = float(train_cfg["lr"])
    trainables = {
        "generation": [Trainable(parts.unet, lr)],
        "joint": [Trainable(parts.unet, lr), Trainable(head, float(train_cfg.get("head_lr", lr)))],
    }
    g = torch.Generator().manual_seed(int(train_cfg.get("seed", 0)))
    history = TrainHistory()
    run = run or RunOptions()
    for stage in STAGES:
        fit(
            trainables[stage],
            partial(step, matting=stage == "joint"),
            len(pairs),
            train_cfg,
            steps=int(stages[stage]),
            generator=g,
            history=history,
            stage=stage,
            **run.for_stage(stage),
        )
    return history


def train_and_save(
    parts: SDParts,
    pairs: TrainingPairs,
    train_cfg: Mapping[str, Any],
    folder: Path,
    names: tuple[str, ...] = ("unet", "scheduler"),
    run: RunOptions | None = None,
) -> TrainHistory:
    """Train ``parts.unet`` with a fresh matting head (:func:`train_diffumatting`), then save the
    parts ``names`` and the head (:data:`HEAD_FILE`) into ``folder``."""
    store = install_green_probe(parts.unet)
    torch.manual_seed(int(train_cfg.get("seed", 0)))
    head = MattingHead(decoder_feature_channels(parts.vae)).to(parts.unet.device)
    history = train_diffumatting(parts, head, store, pairs, train_cfg, run)
    parts.save(folder, names)
    save_weights(folder / HEAD_FILE, head.state_dict())
    return history


def salient_pairs_source(data: DataPaths) -> Path | None:
    """The captioned salient set a micro-world writes beside its ``class_info.json``, if any."""
    paths_json = data.class_info.parent / "paths.json"
    if not paths_json.is_file():
        return None
    rel = json.loads(paths_json.read_text("utf-8")).get("salient_captions")
    if not rel:
        return None
    path = safe_join(paths_json.parent, rel)
    return path if path.is_file() else None


def _file_pair(image: Path, mask: Path) -> tuple[Any, Any]:
    return read_image(image), read_mask(mask)


def load_salient(
    captions: Path, resolution: int, max_samples: int | None, seed: int, keep: bool = True
) -> TrainingPairs:
    """The ``train`` entries of a micro-world's ``salient/captions.json`` (plain backgrounds)."""
    entries = [
        e for e in json.loads(captions.read_text("utf-8")) if e.get("split", "train") == "train"
    ]
    if max_samples is not None and len(entries) > max_samples:
        rng = np.random.default_rng(seed)
        entries = [entries[i] for i in sorted(rng.choice(len(entries), max_samples, replace=False))]
    root = captions.parent
    return TrainingPairs(
        [
            partial(_file_pair, safe_join(root, e["image"]), safe_join(root, e["mask"]))
            for e in entries
        ],
        [e["class_name"] for e in entries],
        resolution,
        keep,
    )


def diffumatting_pairs(
    data: DataPaths, resolution: int, node: Mapping[str, Any], seed: int, keep: bool = True
) -> TrainingPairs:
    """What DiffuMatting learns objects from: the micro-world's salient set (every class on a
    plain background, the stand-in for web data) when ``data`` has one, else ``data``'s train
    split; ``node`` gives ``max_samples`` and the base-validation ``holdout_*``."""
    salient = salient_pairs_source(data)
    if salient is not None:
        return load_salient(salient, resolution, node.get("max_samples"), seed, keep)
    return load_pairs(data, resolution, node.get("max_samples"), seed, holdout_of(node), keep)
