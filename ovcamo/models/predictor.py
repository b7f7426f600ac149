"""Segment one user image with a trained segmenter, as segment-anything's predictor does: the image
may be a path, a PIL image or a uint8 ``H×W×3`` array; it is resized to the model's input size
here, and the mask comes back at the image's own size, post-processed exactly as the evaluator's
predictions are (sigmoid → per-image min-max → bilinear resize → uint8)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovcamo.data.io import read_image
from ovcamo.data.transforms import eval_image
from ovcamo.metrics.postprocess import to_uint8_prediction

#: What :func:`predict_image` (and ``BaCLIP.predict``) accepts for one image.
ImageInput = str | os.PathLike | Image.Image | np.ndarray


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """``image`` as RGB uint8 ``H×W×3``: a file is read (gray, palette, RGBA and 16-bit files are
    converted), a PIL image converted, an array checked."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"an image array must be uint8 H×W×3 (RGB), got {image.dtype} {image.shape}"
            )
        if min(image.shape[:2]) < 1:
            raise ValueError(f"an image array must not be empty, got shape {image.shape}")
        # torch cannot wrap a read-only array (e.g. np.asarray of a PIL image) without copying.
        return image if image.flags.writeable else image.copy()
    raise TypeError(
        f"an image must be a path, a PIL image or a uint8 H×W×3 array, got {type(image).__name__}"
    )


def model_input(image: np.ndarray, image_size: int) -> torch.Tensor:
    """RGB uint8 ``H×W×3`` → float32 ``1×3×S×S`` in [0, 1], as the evaluation transform makes it."""
    return eval_image(image, image_size)[None]


def postprocess(
    mask_logits: torch.Tensor,
    class_logits: torch.Tensor,
    class_names: Sequence[str],
    size: tuple[int, int],
) -> dict[str, Any]:
    """One image's outputs at its own ``size`` ``(H, W)``.

    ``mask_logits``: ``S×S`` logits; ``class_logits``: ``(K,)``. Returns ``mask`` (uint8 ``H×W``,
    the evaluator's post-processing), ``mask_probs`` (float32 ``H×W``, the sigmoid resized
    bilinearly, not min-max normalised), ``class_name`` (the argmax), ``score`` (its probability)
    and ``class_probs`` (``{name: probability}``, softmax over the K candidates, in their order).
    """
    probs = torch.sigmoid(mask_logits.float())[None, None]
    probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[0, 0]
    class_probs = class_logits.float().softmax(dim=-1).cpu().tolist()
    best = int(np.argmax(class_probs))
    return {
        "mask": to_uint8_prediction(mask_logits, size),
        "mask_probs": probs.clamp(0, 1).cpu().numpy().astype(np.float32),
        "class_name": class_names[best],
        "score": class_probs[best],
        "class_probs": dict(zip(class_names, class_probs, strict=True)),
    }


@torch.no_grad()
def predict_image(
    model: torch.nn.Module, image: ImageInput, class_names: Sequence[str]
) -> dict[str, Any]:
    """Segment and classify one image among ``class_names`` (see :func:`postprocess` for the
    returned dict). ``model``: a BaCLIP variant (its ``config`` names the input size); it runs in
    eval mode on its own device and its previous mode is restored."""
    names = list(class_names)
    if not names:
        raise ValueError("class_names must name at least one candidate class")
    rgb = as_rgb_array(image)
    size = int(model.config["backbone"]["image_size"])
    device = next(model.parameters()).device
    out = model.predict(model_input(rgb, size).to(device), names)
    return postprocess(out["mask_logits"][0, 0], out["class_logits"][0], names, rgb.shape[:2])
