"""Object-expansion metric of salient-object-aware outpainting (CVPRW 2024; docs/design.md,
"Generation"), and the segmenters it reads generated images with.

A generator that repaints the background may grow the object: it continues a leg, a wing or a
shadow into the region it paints. The metric segments the generated image and counts the object
pixels found outside the source object's mask. The segmenter is the user's: the project's own
BaCLIP checkpoint (open-vocabulary, prompted with the class name) or SAM (prompted with a point
inside the object), or any callable.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: A segmenter: ``(RGB uint8 H×W×3, class name, source object mask bool H×W)`` → the object it
#: finds, as a bool mask or a probability map ``H×W``.
Segmenter = Callable[[np.ndarray, str, np.ndarray], np.ndarray]


def object_expansion(
    image: np.ndarray,
    object_mask: np.ndarray,
    segmenter: Segmenter,
    class_name: str = "object",
    threshold: float = 0.5,
) -> float:
    """``area(m_out ∪ m_in) − area(m_in)`` over the image area.

    ``m_in`` is the source object mask (bool ``H×W``); ``m_out`` is what ``segmenter`` finds in
    the generated ``image`` (bool, or a probability map thresholded at ``threshold``). 0 means
    the generator grew nothing object-like beyond the object; 1 − area(m_in)/area(image) is the
    worst case.
    """
    if image.shape[:2] != object_mask.shape:
        raise ValueError(f"image {image.shape[:2]} and object mask {object_mask.shape} differ")
    m_in = object_mask.astype(bool)
    found = np.asarray(segmenter(image, class_name, m_in))
    if found.shape != object_mask.shape:
        raise ValueError(
            f"segmenter returned a map of shape {found.shape}, expected {object_mask.shape}"
        )
    m_out = found if found.dtype == bool else found > threshold
    return float(((m_out | m_in).sum() - m_in.sum()) / m_in.size)


class BaCLIPSegmenter:
    """The project's segmenter, loaded from what ``ovcamo-train`` wrote (a checkpoint or run
    folder, by :func:`ovcamo.models.load_model`) or a saved model folder, asked
    for the sample's class: its mask probabilities at the image's own size."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu") -> None:
        from ovcamo.models import ModelNotFoundError, load_model

        try:
            self.model = load_model(os.path.expanduser(str(checkpoint)), device)
        except ModelNotFoundError as e:
            raise FileNotFoundError(f"quality.segmenter_checkpoint: {e}") from None

    def __call__(self, image: np.ndarray, class_name: str, object_mask: np.ndarray) -> np.ndarray:
        return self.model.predict(image, [class_name]).mask_probs


class SAMSegmenter:
    """segment-anything, prompted with one point inside the object (its pixel farthest from the
    background), the highest-scoring of its three masks: the whole object-like region the point
    falls in, grown parts included."""

    def __init__(self, checkpoint: str | os.PathLike, sam_type: str = "vit_b", device: str = "cpu"):
        from ovcamo.models.sam_decoder import SAM_CHECKPOINTS, SAM_URL

        path = Path(os.path.expanduser(str(checkpoint)))
        if not path.is_file():
            name = SAM_CHECKPOINTS.get(sam_type, SAM_CHECKPOINTS["vit_b"])
            raise FileNotFoundError(
                f"quality.segmenter_checkpoint: the SAM file {path} does not exist. Download the "
                f"official {sam_type} checkpoint ({SAM_URL}{name}) on a machine with internet "
                "access, copy it here and pass its path (quality.sam_type names the model size)."
            )
        from segment_anything import SamPredictor, sam_model_registry

        self.predictor = SamPredictor(sam_model_registry[sam_type](checkpoint=str(path)).to(device))

    def __call__(self, image: np.ndarray, class_name: str, object_mask: np.ndarray) -> np.ndarray:
        inside = cv2.distanceTransform(object_mask.astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
        self.predictor.set_image(image)
        masks, scores, _ = self.predictor.predict(
            point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=True
        )
        return masks[int(np.argmax(scores))].astype(bool)


def build_segmenter(
    name: str, checkpoint: Any = None, sam_type: str = "vit_b", device: str = "cpu"
) -> Segmenter:
    """``baclip`` or ``sam`` (both read ``checkpoint``), or ``"module.path:callable"`` returning a
    :data:`Segmenter` (called with ``checkpoint=``)."""
    if name == "baclip":
        return BaCLIPSegmenter(checkpoint, device)
    if name == "sam":
        return SAMSegmenter(checkpoint, sam_type, device)
    if ":" in name:
        module, func = name.split(":", 1)
        return getattr(importlib.import_module(module), func)(checkpoint=checkpoint)
    raise KeyError(f"quality.segmenter must be 'baclip', 'sam' or 'module:callable', got {name!r}")
