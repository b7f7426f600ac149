"""Segment user images with a trained segmenter, as segment-anything's predictor does.

An image may be a path, a PIL image, a uint8 ``H×W×3`` array or a float ``3×H×W`` tensor in
[0, 1]; it is resized to the model's input size here, and the mask comes back at the image's own
size, post-processed exactly as the evaluator's predictions are (sigmoid → per-image min-max →
bilinear resize → uint8). :func:`predict` answers one image with one :class:`Prediction` and a
list with a list; :class:`BaCLIPPredictor` computes an image's features once and answers any
number of class lists from them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ovcamo.data.io import read_image
from ovcamo.data.transforms import eval_image
from ovcamo.metrics.postprocess import to_uint8_prediction

if TYPE_CHECKING:
    from ovcamo.models.baclip import BaCLIP, EncodedImages

#: One image, as :func:`predict` and ``BaCLIP.predict`` accept it.
ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


@dataclass(eq=False)
class Prediction:
    """One image's answer, at the image's own size ``H×W``.

    Attributes:
        mask: uint8 ``H×W``, the evaluator's post-processing of the mask logits.
        mask_probs: float32 ``H×W``, the mask sigmoid resized bilinearly (not min-max normalised).
        class_name: the most probable candidate class.
        score: its probability.
        class_probs: ``{name: probability}``, softmax over the candidates, in their order.
    """

    mask: np.ndarray
    mask_probs: np.ndarray
    class_name: str
    score: float
    class_probs: dict[str, float]


def as_rgb_array(image: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
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
        "an image must be a path, a PIL image, a uint8 H×W×3 array or a float 3×H×W tensor, got "
        f"{type(image).__name__}"
    )


def model_input(image: ImageInput, image_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``image`` → (float32 ``1×3×S×S`` in [0, 1] as the evaluation transform makes it, the
    image's own size ``(H, W)``). A float ``3×H×W`` tensor in [0, 1] is resized as an array is
    (bilinear, antialiased; not at all at ``S×S``)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(
                f"an image tensor must be float 3×H×W in [0, 1], got {image.dtype} "
                f"{tuple(image.shape)}"
            )
        size = (int(image.shape[1]), int(image.shape[2]))
        x = image.detach().float().cpu()
        if size != (image_size, image_size):
            x = TF.resize(x, [image_size, image_size], InterpolationMode.BILINEAR, antialias=True)
        return x[None], size
    rgb = as_rgb_array(image)
    return eval_image(rgb, image_size)[None], rgb.shape[:2]


def postprocess(
    mask_logits: torch.Tensor,
    class_logits: torch.Tensor,
    class_names: Sequence[str],
    size: tuple[int, int],
) -> Prediction:
    """One image's :class:`Prediction` at its own ``size`` ``(H, W)`` from its ``S×S`` mask logits
    and ``(K,)`` class logits."""
    probs = torch.sigmoid(mask_logits.float())[None, None]
    probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[0, 0]
    class_probs = class_logits.float().softmax(dim=-1).cpu().tolist()
    best = int(np.argmax(class_probs))
    return Prediction(
        mask=to_uint8_prediction(mask_logits, size),
        mask_probs=probs.clamp(0, 1).cpu().numpy().astype(np.float32),
        class_name=class_names[best],
        score=class_probs[best],
        class_probs=dict(zip(class_names, class_probs, strict=True)),
    )


@contextlib.contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without autograd; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _candidates(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise TypeError(f"class_names must be a list of names, got the string {class_names!r}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names must name at least one candidate class")
    return names


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict(
    model: BaCLIP,
    images: ImageInput | Sequence[ImageInput],
    class_names: Sequence[str],
    *,
    batch_size: int = 8,
) -> Prediction | list[Prediction]:
    """Segment and classify images among ``class_names``.

    ``images``: one image (a path, a PIL image, a uint8 ``H×W×3`` array, a float ``3×H×W``
    tensor in [0, 1]) → one :class:`Prediction`; a list or tuple of them, or a float
    ``B×3×H×W`` tensor → a list, in order, run ``batch_size`` at a time. ``model`` runs in eval
    mode on its own device; its previous mode is restored.
    """
    names = _candidates(class_names)
    single = not isinstance(images, (list, tuple)) and not (
        isinstance(images, torch.Tensor) and images.ndim == 4
    )
    items = [images] if single else list(images)
    size = int(model.config["backbone"]["image_size"])
    device = _device(model)
    results: list[Prediction] = []
    with _inference(model):
        for start in range(0, len(items), max(1, batch_size)):
            inputs = [model_input(item, size) for item in items[start : start + batch_size]]
            x = torch.cat([x for x, _ in inputs]).to(device)
            out = model(x, names)
            for i, (_, own_size) in enumerate(inputs):
                results.append(
                    postprocess(out["mask_logits"][i, 0], out["class_logits"][i], names, own_size)
                )
    return results[0] if single else results


class BaCLIPPredictor:
    """segment-anything's ``SamPredictor`` for BaCLIP: :meth:`set_image` runs the frozen CLIP on
    one image once, and :meth:`predict` answers any number of candidate class lists from those
    features, with the same result as :func:`predict` on the image.

    >>> predictor = BaCLIPPredictor(model)
    >>> predictor.set_image("photo.jpg")
    >>> animals = predictor.predict(["owl", "frog", "snake"])
    >>> plants = predictor.predict(["moss", "lichen"])
    """

    def __init__(self, model: BaCLIP) -> None:
        self.model = model
        self.reset_image()

    def set_image(self, image: ImageInput) -> None:
        """Compute and keep ``image``'s features (a path, PIL image, uint8 ``H×W×3`` array or
        float ``3×H×W`` tensor in [0, 1])."""
        x, size = model_input(image, int(self.model.config["backbone"]["image_size"]))
        with _inference(self.model):
            self._encoded = self.model.encode_image(x.to(_device(self.model)))
        self._size = size

    def reset_image(self) -> None:
        """Forget the image set by :meth:`set_image`."""
        self._encoded: EncodedImages | None = None
        self._size: tuple[int, int] | None = None

    @property
    def is_image_set(self) -> bool:
        """Whether :meth:`set_image` has been called (and not reset)."""
        return self._encoded is not None

    def predict(self, classes: Sequence[str]) -> Prediction:
        """The set image's :class:`Prediction` among ``classes``, from its kept features."""
        if self._encoded is None or self._size is None:
            raise RuntimeError("no image set: call set_image(image) before predict(classes)")
        names = _candidates(classes)
        with _inference(self.model):
            out = self.model.decode(self._encoded, names)
        return postprocess(out["mask_logits"][0, 0], out["class_logits"][0], names, self._size)
