"""The classic background-matching generator: a background quilted from real backgrounds of the
object's class (or from the object's own texture), the object pasted at a new position and scale
with its pixels and mask exact (docs/generation.md)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from generation.base import (
    GeneratedSample,
    Placement,
    SkipSample,
    SourceObject,
    check_source,
    mask_box,
    place_object,
)
from generation.classic.quilting import match_colour_statistics, quilt_texture
from ovcamo.data import (
    DataPaths,
    Record,
    UnreadableSampleError,
    holdout_split,
    load_sample,
    resolve_records,
)

#: Where the background texture comes from.
EXEMPLARS = ("class", "source", "object")


@dataclass
class ClassicGenerator:
    """Background matching without weights.

    ``exemplar`` picks the texture the background is quilted from:

    - ``class``: the background of a training image of the same class, drawn per seed from
      ``pool`` (the training part of the data, never its held-out part); the source's own
      background when the class has no image in the pool;
    - ``source``: the source image's own background;
    - ``object``: the object's own pixels (the background then wears the object's texture).

    Exemplar backgrounds are taken more than ``exemplar_margin`` px from their object and
    rescaled to the source's size, so their texture keeps its scale. ``scale_range`` bounds the
    object's new scale; ``max_fill`` the share of each canvas side the scaled object may take. An
    object touching a border keeps touching it (its cut edge stays at the frame), and one
    touching two opposite borders keeps its scale and offset on that axis.
    """

    name: str = "classic"
    exemplar: str = "class"
    exemplar_margin: int = 2
    patch: int = 32
    candidates: int = 16
    tolerance: float = 0.1
    scale_range: tuple[float, float] = (0.6, 1.2)
    max_fill: float = 0.9
    min_object_pixels: int = 64
    max_object_fraction: float = 0.85
    colour_match: bool = True
    pool: dict[str, list[Record]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.exemplar not in EXEMPLARS:
            raise ValueError(
                f"generator.exemplar must be one of {EXEMPLARS}, got {self.exemplar!r}"
            )

    def placement(self, mask: np.ndarray, rng: np.random.Generator) -> Placement:
        """Draw a new scale and position for the object in ``mask`` (same canvas size)."""
        h, w = mask.shape
        box = mask_box(mask)
        t, left, b, r = box
        bh, bw = b - t, r - left
        touch_top, touch_bottom, touch_left, touch_right = t == 0, b == h, left == 0, r == w
        lo, hi = self.scale_range
        if (touch_top and touch_bottom) or (touch_left and touch_right):
            scale = 1.0
        else:
            hi = min(hi, self.max_fill * h / bh, self.max_fill * w / bw)
            scale = float(rng.uniform(min(lo, hi), hi))
        sh, sw = max(1, round(bh * scale)), max(1, round(bw * scale))

        def offset(size: int, span: int, first: bool, last: bool, old: int) -> int:
            if first and last:
                return old
            if first:
                return 0
            if last:
                return span - size
            return int(rng.integers(0, span - size + 1))

        top = offset(sh, h, touch_top, touch_bottom, t)
        new_left = offset(sw, w, touch_left, touch_right, left)
        return Placement(box, scale, top, new_left, h, w)

    def texture_exemplar(
        self, source: SourceObject, class_name: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image, mask of usable pixels, where from)`` for the background texture."""
        if self.exemplar == "object":
            t, left, b, r = mask_box(source.mask)
            return source.image[t:b, left:r], source.mask[t:b, left:r], source.unique_id
        image, mask, uid = source.image, source.mask, source.unique_id
        pool = self.pool.get(class_name) if self.exemplar == "class" else None
        loaded = None
        if pool:
            record = pool[int(rng.integers(len(pool)))]
            # A body too corrupt to decode passes the header check; its sample keeps the source's.
            with contextlib.suppress(UnreadableSampleError):
                loaded = load_sample(record)
        if loaded is not None:
            image, mask, uid = loaded["image"], loaded["mask"], loaded["unique_id"]
            scale = min(source.mask.shape) / min(mask.shape)
            if scale != 1.0:
                size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
                mask = mask.astype(bool)
        kernel = np.ones((2 * self.exemplar_margin + 1,) * 2, np.uint8)
        near_object = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        return image, ~near_object, uid

    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample:
        """A new sample from ``source``: uint8 ``H×W×3`` image, bool ``H×W`` mask of the same size."""
        check_source(
            source,
            min_object_pixels=self.min_object_pixels,
            max_object_fraction=self.max_object_fraction,
        )
        rng = np.random.default_rng(seed)
        exemplar, usable, exemplar_id = self.texture_exemplar(source, class_name, rng)
        h, w = source.mask.shape
        try:
            background, patch = quilt_texture(
                exemplar,
                usable,
                h,
                w,
                rng,
                patch=self.patch,
                candidates=self.candidates,
                tolerance=self.tolerance,
            )
        except ValueError as e:
            raise SkipSample(f"tiny_exemplar: {e}") from e
        if self.colour_match:
            background = match_colour_statistics(background, exemplar, usable)
        placement = self.placement(source.mask, rng)
        obj, new_mask = place_object(source.image, source.mask, placement)
        return GeneratedSample(
            image=np.where(new_mask[..., None], obj, background),
            mask=new_mask,
            extra={"placement": placement.to_json(), "patch": patch, "exemplar": exemplar_id},
        )


def training_pool(data: DataPaths, holdout_fraction: float, holdout_seed: int) -> dict:
    """Usable train-split records by class (validated as the trainer's loader does, so the
    held-out part is the trainer's), without the held-out base-validation part."""
    records, _ = resolve_records(data, "train")
    kept, _ = holdout_split(records, holdout_fraction, holdout_seed)
    pool: dict[str, list[Record]] = {}
    for r in kept:
        pool.setdefault(r.class_name, []).append(r)
    return pool


def build_classic(cfg: Any, data: DataPaths | None = None, **_: Any) -> ClassicGenerator:
    """Builder named by ``ovcamo/conf/generator/classic.yaml``.

    With ``exemplar: class`` the exemplar pool is the training part of ``data``, split as the data
    config says (``holdout_*``). A node loaded without a data config (``holdout_fraction`` null,
    e.g. as another generator's background) cannot know that split and gets no pool: every sample
    then takes its source's own background, which is never a held-out image.
    """
    keys = {k: cfg[k] for k in ClassicGenerator.__dataclass_fields__ if k in cfg and k != "pool"}
    if "scale_range" in keys:
        keys["scale_range"] = tuple(float(v) for v in keys["scale_range"])
    fraction = cfg.get("holdout_fraction")
    if keys.get("exemplar", "class") == "class" and data is not None and fraction is not None:
        keys["pool"] = training_pool(data, float(fraction), int(cfg.get("holdout_seed") or 0))
    return ClassicGenerator(**keys)
