"""The classic background-matching generator: quilted background from the object's own texture,
the object pasted at a new position and scale with its pixels and mask exact (DESIGN §7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass
class ClassicGenerator:
    """Background matching without weights.

    ``scale_range`` bounds the object's new scale; ``max_fill`` the share of each canvas side the
    scaled object may take. An object touching a border keeps touching it (its cut edge stays at
    the frame), and one touching two opposite borders keeps its scale and offset on that axis.
    """

    name: str = "classic"
    patch: int = 32
    candidates: int = 16
    tolerance: float = 0.1
    scale_range: tuple[float, float] = (0.6, 1.2)
    max_fill: float = 0.9
    min_object_pixels: int = 64
    max_object_fraction: float = 0.85
    colour_match: bool = True

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

    def generate(self, source: SourceObject, class_name: str, seed: int) -> GeneratedSample:
        """A new sample from ``source``: uint8 ``H×W×3`` image, bool ``H×W`` mask of the same size."""
        image, mask = source.image, source.mask
        check_source(
            source,
            min_object_pixels=self.min_object_pixels,
            max_object_fraction=self.max_object_fraction,
        )
        rng = np.random.default_rng(seed)
        t, left, b, r = mask_box(mask)
        crop, crop_mask = image[t:b, left:r], mask[t:b, left:r]
        h, w = mask.shape
        try:
            background, patch = quilt_texture(
                crop,
                crop_mask,
                h,
                w,
                rng,
                patch=self.patch,
                candidates=self.candidates,
                tolerance=self.tolerance,
            )
        except ValueError as e:
            raise SkipSample(f"tiny_object: {e}") from e
        if self.colour_match:
            background = match_colour_statistics(background, crop, crop_mask)
        placement = self.placement(mask, rng)
        obj, new_mask = place_object(image, mask, placement)
        out = np.where(new_mask[..., None], obj, background)
        return GeneratedSample(
            image=out,
            mask=new_mask,
            extra={"placement": placement.to_json(), "patch": patch},
        )


def build_classic(cfg: Any, **context: Any) -> ClassicGenerator:
    """Builder named by ``ovcamo/conf/generator/classic.yaml``; no weights, so the context is unused."""
    keys = {k: cfg[k] for k in ClassicGenerator.__dataclass_fields__ if k in cfg}
    if "scale_range" in keys:
        keys["scale_range"] = tuple(float(v) for v in keys["scale_range"])
    return ClassicGenerator(**keys)
