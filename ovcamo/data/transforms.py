"""The BaCLIP training and evaluation transforms (BaCLIP, CVPR 2026, §4.1 implementation details).

Training: resize to ``image_size``², horizontal flip, rotation, colour jitter. Every random draw
comes from a generator seeded by the caller for *this sample at this step*, so the same
``(sample, seed)`` always gives the same tensors, in any worker process, before or after a resume.
Evaluation: the image is resized to ``image_size``² and the mask is kept at its own size, because
predictions are scored at the ground truth's resolution (docs/design.md, "Metrics").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``H×W×3`` array → uint8 ``3×H×W`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """bool ``H×W`` array → uint8 ``1×H×W`` tensor with values {0, 1}."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None]


def resize_pair(
    image: torch.Tensor, mask: torch.Tensor | None, size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize a uint8 ``3×H×W`` image (bilinear, antialiased) and ``1×H×W`` mask (nearest) to ``size²``."""
    image = TF.resize(image, [size, size], InterpolationMode.BILINEAR, antialias=True)
    if mask is not None:
        mask = TF.resize(mask, [size, size], InterpolationMode.NEAREST_EXACT)
    return image, mask


_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def shift_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """torchvision's ``adjust_hue`` on a float ``3×H×W`` image in [0, 1] (same values to ~1e-6),
    in half the time: hue from the max channel, then RGB straight from hue, chroma and value
    (the micro recipe shifts every training image's hue)."""
    value = image.amax(0)
    chroma = value - image.amin(0)
    r, g, b = image
    inv = 1.0 / torch.where(chroma > 0, chroma, 1.0)
    hue6 = torch.where(
        value == r,
        (g - b) * inv,
        torch.where(value == g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv),
    )
    hue6 = (hue6 + 6.0 * shift).remainder_(6.0)
    k = (_HUE_OFFSETS.to(hue6) + hue6).remainder_(6.0)
    return value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast and saturation factors drawn from ``[1 − s, 1 + s]``, hue shift from
    ``[−hue, hue]``, applied in a random order (torchvision's ``ColorJitter`` semantics)."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``image``: float ``3×H×W`` in [0, 1] → float ``3×H×W`` in [0, 1]."""
        ops = []
        if self.brightness > 0:
            f = rng.uniform(1 - self.brightness, 1 + self.brightness)
            ops.append(lambda x, f=f: TF.adjust_brightness(x, f))
        if self.contrast > 0:
            f = rng.uniform(1 - self.contrast, 1 + self.contrast)
            ops.append(lambda x, f=f: TF.adjust_contrast(x, f))
        if self.saturation > 0:
            f = rng.uniform(1 - self.saturation, 1 + self.saturation)
            ops.append(lambda x, f=f: TF.adjust_saturation(x, f))
        if self.hue > 0:
            f = rng.uniform(-self.hue, self.hue)
            ops.append(lambda x, f=f: shift_hue(x, f))
        for i in rng.permutation(len(ops)):
            image = ops[i](image)
        return image.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class TrainTransform:
    """Paper training augmentation; call with a sample dict and a per-sample seed.

    Input sample: ``image`` uint8 ``H×W×3``, ``mask`` bool ``H×W`` (plus any metadata, passed on).
    Output: ``image`` float32 ``3×S×S`` in [0, 1], ``mask`` float32 ``1×S×S`` in {0, 1}, ``S = image_size``.
    """

    image_size: int = 384
    hflip_p: float = 0.5
    rotation_p: float = 0.5
    rotation_degrees: float = 15.0
    color_jitter_p: float = 0.5
    color_jitter: ColorJitter = ColorJitter()

    def __call__(self, sample: dict[str, Any], seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        image, mask = resize_pair(
            _image_tensor(sample["image"]), _mask_tensor(sample["mask"]), self.image_size
        )
        if rng.random() < self.hflip_p:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        if self.rotation_degrees > 0 and rng.random() < self.rotation_p:
            angle = float(rng.uniform(-self.rotation_degrees, self.rotation_degrees))
            image = TF.rotate(image, angle, InterpolationMode.BILINEAR, fill=0)
            mask = TF.rotate(mask, angle, InterpolationMode.NEAREST, fill=0)
        image = image.to(torch.float32).div_(255.0)
        if rng.random() < self.color_jitter_p:
            image = self.color_jitter(image, rng)
        return {**sample, "image": image, "mask": mask.to(torch.float32)}


def eval_image(image: np.ndarray, size: int) -> torch.Tensor:
    """What a segmenter sees at evaluation: uint8 RGB ``H×W×3`` → float32 ``3×S×S`` in [0, 1],
    resized bilinearly (antialiased) to ``size²``; CLIP normalisation happens inside the model."""
    resized, _ = resize_pair(_image_tensor(image), None, size)
    return resized.to(torch.float32).div_(255.0)


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation preprocessing: image resized to ``image_size``², mask kept at its own size.

    Output: ``image`` float32 ``3×S×S`` in [0, 1], ``mask`` bool ``H×W`` numpy (the GT as read),
    ``gt_size`` ``(H, W)``, plus the sample's metadata. The seed is accepted and ignored, so training
    and evaluation datasets share one calling convention.
    """

    image_size: int = 384

    def __call__(self, sample: dict[str, Any], seed: int = 0) -> dict[str, Any]:
        mask = np.asarray(sample["mask"], dtype=bool)
        return {
            **sample,
            "image": eval_image(sample["image"], self.image_size),
            "mask": mask,
            "gt_size": mask.shape,
        }


def build_train_transform(cfg: Any, image_size: int) -> TrainTransform:
    """Build the training transform from a ``train.augment`` node (keys as the dataclass fields)."""
    cfg = dict(cfg or {})
    jitter = ColorJitter(**dict(cfg.pop("color_jitter", None) or {}))
    unknown = set(cfg) - {"hflip_p", "rotation_p", "rotation_degrees", "color_jitter_p"}
    if unknown:
        raise KeyError(f"train.augment has unknown key(s) {sorted(unknown)}")
    return TrainTransform(image_size=int(image_size), color_jitter=jitter, **cfg)
