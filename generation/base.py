"""The contract every generator fulfils, so the planner, writer and loop treat them alike."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np
from omegaconf import OmegaConf


@dataclass
class SourceObject:
    """A training sample a generator starts from: RGB uint8 ``H×W×3``, bool mask ``H×W``."""

    image: np.ndarray
    mask: np.ndarray
    class_name: str
    unique_id: str


@dataclass
class GeneratedSample:
    """One synthetic sample: RGB uint8 ``H×W×3`` and its exact bool mask ``H×W``.

    ``alpha`` (float32 ``H×W`` in [0, 1]) is kept when a method produces a soft matte;
    ``extra`` holds method-specific provenance written beside the sample.
    """

    image: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SkipSample(Exception):
    """Raised by a generator that cannot make a sample from a source; the reason is reported."""


def check_source(
    source: SourceObject, *, min_object_pixels: int = 1, max_object_fraction: float = 1.0
) -> None:
    """Refuse a source no generator can use.

    Raises :class:`SkipSample` with the reason (``size_mismatch``, ``empty_mask``, ``tiny_object``,
    ``object_fills_image``) that the writer's summary counts.
    """
    image, mask = source.image, source.mask
    if image.shape[:2] != mask.shape:
        raise SkipSample(f"size_mismatch: image {image.shape[:2]} vs mask {mask.shape}")
    area = int(mask.sum())
    if area == 0:
        raise SkipSample("empty_mask")
    if area < min_object_pixels:
        raise SkipSample(f"tiny_object: {area} px < {min_object_pixels}")
    if area > max_object_fraction * mask.size:
        raise SkipSample(f"object_fills_image: {area / mask.size:.0%} of the image")


@runtime_checkable
class Generator(Protocol):
    """``generate`` turns a source object into a new sample; deterministic for a given seed."""

    name: str

    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample: ...


def builder_module(cfg: Any) -> tuple[ModuleType, str]:
    """The module and function name a ``generator`` config node's ``builder`` key names
    (``"module.path:function"``)."""
    spec = cfg.get("builder") if hasattr(cfg, "get") else None
    if not spec or ":" not in str(spec):
        raise KeyError(f"generator config needs 'builder: module.path:function', got {spec!r}")
    module_name, func_name = str(spec).split(":", 1)
    try:
        return importlib.import_module(module_name), func_name
    except ImportError as e:
        raise KeyError(f"generator.builder {spec!r} does not name a function: {e}") from e


def build_generator(cfg: Any, **context: Any) -> Generator:
    """Build the generator a ``generator`` config node names.

    The node's ``builder`` key is ``"module.path:function"``; the function receives the node and the
    context the caller has (``data`` — the source dataset's ``DataPaths``, ``cache_dir``, ``device``)
    and returns a :class:`Generator`, training or loading whatever weights it needs.
    """
    module, func_name = builder_module(cfg)
    func = getattr(module, func_name, None)
    if func is None:
        raise KeyError(f"generator.builder {cfg.get('builder')!r} does not name a function")
    return func(cfg, **context)


#: Config keys (the last part of a dotted key) that name weights on disk.
WEIGHT_KEYS = ("pretrained", "checkpoint", "weights", "model_dir")


def missing_weights(cfg: Any, prefix: str = "generator.") -> list[str]:
    """What the generator config ``cfg`` reads from disk and cannot find, one sentence group per
    missing piece, each naming the key (``prefix`` + its dotted path), the path, and how to get or
    make it. Nothing is loaded or computed.

    The builder's module answers when it defines ``missing_weights(cfg, prefix)``; otherwise every
    string under a key naming weights (:data:`WEIGHT_KEYS`, at any depth, e.g. LAKE-RED's
    ``train.init_checkpoint``) must exist. Unset keys (null) are not needed.
    """
    module, _ = builder_module(cfg)
    own = getattr(module, "missing_weights", None)
    if own is not None:
        return own(cfg, prefix)
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    return [
        f"{prefix}{key}: {value} does not exist (see ovcamo/conf/generator/"
        f"{plain.get('name', '<name>')}.yaml for how to obtain it)"
        for key, value in _leaves(plain)
        if isinstance(value, str)
        and any(w in key.rsplit(".", 1)[-1] for w in WEIGHT_KEYS)
        and not Path(os.path.expanduser(value)).exists()
    ]


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a plain nested dict."""
    if not isinstance(node, dict):
        return [(prefix, node)]
    out = []
    for k, v in node.items():
        out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    return out


@dataclass(frozen=True)
class Placement:
    """Where a generator put the source object: the source box ``(top, left, bottom, right)``,
    scaled by ``scale`` and pasted with its top-left corner at ``(top, left)`` of an ``H×W`` canvas.

    Generators that keep the object where it was use :meth:`identity`. Recorded in ``extra`` so
    quality checks can rebuild the exact object pixels and mask a sample must contain.
    """

    box: tuple[int, int, int, int]
    scale: float
    top: int
    left: int
    height: int
    width: int

    @classmethod
    def identity(cls, height: int, width: int) -> Placement:
        return cls((0, 0, height, width), 1.0, 0, 0, height, width)

    def to_json(self) -> dict[str, Any]:
        return {
            "box": list(self.box),
            "scale": self.scale,
            "top": self.top,
            "left": self.left,
            "height": self.height,
            "width": self.width,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Placement:
        return cls(
            tuple(int(v) for v in d["box"]),  # type: ignore[arg-type]
            float(d["scale"]),
            int(d["top"]),
            int(d["left"]),
            int(d["height"]),
            int(d["width"]),
        )


def place_object(
    image: np.ndarray, mask: np.ndarray, placement: Placement
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``placement`` to a source object.

    Returns ``(object_pixels, mask)`` on the ``height×width`` canvas: uint8 ``H×W×3`` (zero outside
    the mask) and bool ``H×W``. The image is resized with area/bilinear interpolation and the mask
    with nearest neighbour, so the same call always gives the same pixels.
    """
    import cv2

    top, left, bottom, right = placement.box
    crop_img, crop_mask = image[top:bottom, left:right], mask[top:bottom, left:right]
    if placement.scale != 1.0:
        h = max(1, round((bottom - top) * placement.scale))
        w = max(1, round((right - left) * placement.scale))
        interp = cv2.INTER_AREA if placement.scale < 1.0 else cv2.INTER_LINEAR
        crop_img = cv2.resize(crop_img, (w, h), interpolation=interp)
        crop_mask = cv2.resize(crop_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        crop_mask = crop_mask.astype(bool)
    out_img = np.zeros((placement.height, placement.width, 3), np.uint8)
    out_mask = np.zeros((placement.height, placement.width), bool)
    h, w = crop_mask.shape
    out_mask[placement.top : placement.top + h, placement.left : placement.left + w] = crop_mask
    region = out_img[placement.top : placement.top + h, placement.left : placement.left + w]
    region[crop_mask] = crop_img[crop_mask]
    return out_img, out_mask


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(top, left, bottom, right)`` of a non-empty bool mask (bottom/right exclusive)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("mask is empty")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
