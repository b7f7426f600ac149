"""BaCLIP at micro widths can fit 8 micro-world images (the whole model learns, end to end)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ovcamo import CONF_DIR
from ovcamo.data.io import read_image, read_mask, safe_join
from ovcamo.data.world import ensure_world
from ovcamo.models import build_model, model_config


def _eight_train_images() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """4 owls and 4 frogs of a small micro-world: images ``8×3×128×128``, masks ``8×1×128×128``."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "world" / "micro.yaml"))
    cfg.update(
        classes={"train": ["owl", "frog"], "test": ["moth"]},
        train_counts={"min": 4, "max": 4},
        test_count=1,
        salient_per_class=1,
        salient_heldout_per_class=1,
        camouflaged_web_per_class=1,
    )
    root = ensure_world(cfg, progress=False)
    paths = json.loads((root / "paths.json").read_text())
    classes = [
        c["name"]
        for c in json.loads((root / "class_info.json").read_text())
        if c["split"] == "train"
    ]
    samples = [
        s for s in json.loads((root / "sample_info.json").read_text()) if s["base_class"] in classes
    ]
    assert len(samples) == 8
    images = torch.stack(
        [
            torch.from_numpy(read_image(safe_join(root / paths["train_image_dir"], s["image"])))
            .permute(2, 0, 1)
            .float()
            / 255
            for s in samples
        ]
    )
    masks = torch.stack(
        [
            torch.from_numpy(read_mask(safe_join(root / paths["train_mask_dir"], s["mask"])))[
                None
            ].float()
            for s in samples
        ]
    )
    return images, masks, classes


def _mean_iou(preds: list, masks: torch.Tensor) -> float:
    probs = torch.from_numpy(np.stack([p.mask_probs for p in preds]))[:, None]
    pred, gt = probs > 0.5, masks > 0.5
    inter = (pred & gt).sum((1, 2, 3)).float()
    union = (pred | gt).sum((1, 2, 3)).float().clamp(min=1)
    return float((inter / union).mean())


@pytest.mark.slow
def test_micro_baclip_overfits_eight_micro_world_images(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    images, masks, classes = _eight_train_images()
    torch.manual_seed(0)
    model = build_model(model_config("baclip_micro", "micro", ["backbone.pretrained=null"]))
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    iou_before = _mean_iou(model.predict(images, classes), masks)
    iou = iou_before
    for step in range(1, 301):
        model.train()
        loss = model.loss(model(images, classes), masks)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 0:
            iou = _mean_iou(model.predict(images, classes), masks)
            if iou >= 0.8:
                break
    assert iou >= 0.8, f"IoU {iou:.3f} after {step} steps (started at {iou_before:.3f})"
    assert iou_before < 0.5
