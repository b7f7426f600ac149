"""The paper transforms: shapes, value ranges, mask/image alignment, per-sample seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovcamo.data.transforms import (
    ColorJitter,
    EvalTransform,
    TrainTransform,
    build_train_transform,
    shift_hue,
)


def _sample(h: int = 30, w: int = 40) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[5:15, 8:30] = True
    return {"image": image, "mask": mask, "class_name": "snow leopard", "unique_id": "000001_x"}


def test_train_transform_shapes_ranges_and_metadata():
    out = TrainTransform(image_size=32)(_sample(), seed=3)
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (1, 32, 32) and out["mask"].dtype == torch.float32
    assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert out["class_name"] == "snow leopard" and out["unique_id"] == "000001_x"


def test_same_seed_same_output_different_seed_differs():
    t = TrainTransform(image_size=32, hflip_p=0.5, rotation_p=1.0, color_jitter_p=1.0)
    a, b = t(_sample(), seed=11), t(_sample(), seed=11)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    outs = [t(_sample(), seed=s)["image"] for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_flip_moves_mask_with_image():
    s = _sample()
    s["image"][:] = 0
    s["image"][s["mask"]] = 255
    t = TrainTransform(image_size=40, hflip_p=1.0, rotation_p=0.0, color_jitter_p=0.0)
    out = t(s, seed=0)
    fg = out["image"].mean(0) > 0.5
    assert torch.equal(fg, out["mask"][0] > 0.5)
    # flipped: the object now sits in the right half, it was in the left half before
    cols = torch.nonzero(out["mask"][0]).float()[:, 1].mean()
    assert cols > 20


def test_rotation_keeps_mask_aligned_with_object():
    s = _sample(40, 40)
    s["image"][:] = 0
    s["image"][s["mask"]] = 255
    t = TrainTransform(
        image_size=40, hflip_p=0.0, rotation_p=1.0, rotation_degrees=30, color_jitter_p=0.0
    )
    out = t(s, seed=0)  # the draws of seed 0 give a rotation of about −27.5°
    fg = out["image"].mean(0) > 0.5
    agree = (fg == (out["mask"][0] > 0.5)).float().mean()
    assert agree > 0.97
    unrotated = TrainTransform(40, hflip_p=0.0, rotation_p=0.0, color_jitter_p=0.0)(s, 0)["mask"]
    assert (out["mask"] != unrotated).float().mean() > 0.05


def test_colour_jitter_matches_torchvision_functional_in_order():
    from torchvision.transforms.v2 import functional as TF

    img = torch.rand(3, 8, 8)
    jitter = ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    rng = np.random.default_rng(7)
    got = jitter(img.clone(), rng)
    rng = np.random.default_rng(7)
    b, c, s, h = (
        rng.uniform(0.7, 1.3),
        rng.uniform(0.7, 1.3),
        rng.uniform(0.7, 1.3),
        rng.uniform(-0.1, 0.1),
    )
    ops = [
        lambda x: TF.adjust_brightness(x, b),
        lambda x: TF.adjust_contrast(x, c),
        lambda x: TF.adjust_saturation(x, s),
        lambda x: TF.adjust_hue(x, h),
    ]
    ref = img.clone()
    for i in rng.permutation(4):
        ref = ops[i](ref)
    torch.testing.assert_close(got, ref.clamp(0, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shift", [-0.5, -0.2, 0.0, 0.13, 0.5])
def test_shift_hue_matches_torchvision_adjust_hue(shift: float) -> None:
    from torchvision.transforms.v2 import functional as TF

    img = torch.rand(3, 24, 24)
    img[:, :4] = 0.5  # grey: no hue
    img[1, 4:8] = img[0, 4:8]  # red and green tie
    img[2, 8:12] = img[1, 8:12]  # green and blue tie
    img[:, 12:14] = 0.0  # black
    torch.testing.assert_close(shift_hue(img, shift), TF.adjust_hue(img, shift), rtol=0, atol=1e-5)


def test_eval_transform_keeps_gt_size():
    out = EvalTransform(image_size=32)(_sample(30, 40))
    assert out["image"].shape == (3, 32, 32)
    assert out["mask"].shape == (30, 40) and out["mask"].dtype == bool
    assert out["gt_size"] == (30, 40)


def test_build_from_config_and_unknown_key():
    t = build_train_transform(
        {"hflip_p": 0.0, "color_jitter": {"brightness": 0.1, "hue": 0.05}}, image_size=16
    )
    assert t.image_size == 16 and t.hflip_p == 0.0 and t.color_jitter.hue == 0.05
    with pytest.raises(KeyError, match="rotaton"):
        build_train_transform({"rotaton": 3}, image_size=16)
