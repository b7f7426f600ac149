"""Procedural renderer of the micro-world: class styles, silhouettes, textures, scenes
(docs/design.md, "The micro-world").

Every class is a seeded *shape family* (a silhouette with pose, scale and small deformations) and a
seeded *pattern family* (stripes, spots, mottling, scales, veins, reticulation, rings, checks) with
its own palette. A camouflaged scene draws the background from the same pattern family and palette
as the object; ``difficulty`` in ``[0, 1]`` moves a scene from easy to see (generic texture, strong
rim shading and shadow, large object, no blur) to hard to see (the object's own texture, faint rim
and shadow, small blurred object).

The image is composed as ``where(mask, object_layer, background_layer)`` from two separately
finished layers, so the mask is exactly the set of object pixels. All randomness comes from
``numpy.random.Generator`` objects seeded by :func:`stable_seed`, so the same seed gives the same
pixels on every machine.
"""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, shift, zoom

SHAPE_FAMILIES = ("blob", "star", "rod", "leaf", "triangle", "cross", "bilobe", "flower")
PATTERN_FAMILIES = (
    "stripes",
    "spots",
    "mottling",
    "scales",
    "veins",
    "reticulation",
    "rings",
    "checks",
)
_GOLDEN = 0.6180339887498949


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from any printable parts, independent of Python's hash randomisation."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class ClassStyle:
    """What makes one class look like itself: shape family, pattern family and palette."""

    name: str
    shape: str
    pattern: str
    hue: float
    saturation: float
    value_low: float
    value_high: float
    aspect: float
    pattern_frequency: float
    pattern_angle: float
    harmonics: tuple[float, float, float]

    def palette(self, hue_shift: float = 0.0, value_shift: float = 0.0) -> np.ndarray:
        """Three RGB colours (dark, mid, light) as a ``3×3`` float array in ``[0, 1]``."""
        h = (self.hue + hue_shift) % 1.0
        lo = float(np.clip(self.value_low + value_shift, 0.05, 0.95))
        hi = float(np.clip(self.value_high + value_shift, 0.1, 1.0))
        stops = (
            (h, self.saturation, lo),
            ((h + 0.03) % 1.0, self.saturation * 0.85, 0.5 * (lo + hi)),
            ((h - 0.03) % 1.0, self.saturation * 0.6, hi),
        )
        return np.array([colorsys.hsv_to_rgb(*s) for s in stops])


def class_style(name: str, class_id: int, seed: int) -> ClassStyle:
    """The style of one class.

    The two families come from the class id, spread so that neighbouring ids differ in pattern and
    the 75 OVCamo classes get distinct (shape, pattern) pairs up to a few repeats that differ in
    hue; hue follows the golden-ratio sequence over ids. Continuous parameters are drawn from a
    generator seeded by ``(seed, name)``, so each world seed gives a different but fixed look.
    """
    rng = np.random.default_rng(stable_seed("style", seed, name))
    n_pat, n_shape = len(PATTERN_FAMILIES), len(SHAPE_FAMILIES)
    pattern = PATTERN_FAMILIES[class_id % n_pat]
    shape = SHAPE_FAMILIES[(3 * class_id + class_id // n_pat) % n_shape]
    hue = (class_id * _GOLDEN + rng.uniform(-0.04, 0.04)) % 1.0
    value_low = rng.uniform(0.15, 0.4)
    return ClassStyle(
        name=name,
        shape=shape,
        pattern=pattern,
        hue=float(hue),
        saturation=float(rng.uniform(0.45, 0.85)),
        value_low=float(value_low),
        value_high=float(value_low + rng.uniform(0.4, 0.6)),
        aspect=float(rng.uniform(1.0, 1.8)),
        pattern_frequency=float(rng.uniform(3.0, 6.0)),
        pattern_angle=float(rng.uniform(0.0, np.pi)),
        harmonics=tuple(float(x) for x in rng.uniform(-0.12, 0.12, size=3)),
    )


# ---------------------------------------------------------------- noise primitives


def _lattice(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.permutation(256), rng.random(256)


def _hash2(perm: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    return perm[(perm[ix & 255] + iy) & 255]


def value_noise(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth lattice value noise in ``[0, 1]`` at coordinates ``(u, v)`` (any shape)."""
    perm, table = _lattice(rng)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    su, sv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    c00 = table[_hash2(perm, iu, iv)]
    c10 = table[_hash2(perm, iu + 1, iv)]
    c01 = table[_hash2(perm, iu, iv + 1)]
    c11 = table[_hash2(perm, iu + 1, iv + 1)]
    return (c00 * (1 - su) + c10 * su) * (1 - sv) + (c01 * (1 - su) + c11 * su) * sv


def fractal_noise(
    u: np.ndarray, v: np.ndarray, rng: np.random.Generator, octaves: int = 3
) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers at doubling frequency, normalised to ``[0, 1]``."""
    total, norm = np.zeros_like(u), 0.0
    for o in range(octaves):
        amp = 0.5**o
        total += amp * value_noise(u * 2**o, v * 2**o, rng)
        norm += amp
    return total / norm


def worley(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest jittered lattice point (F1, F2)."""
    perm, table = _lattice(rng)
    jitter_y = rng.random(256)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    f1 = np.full(u.shape, np.inf)
    f2 = np.full(u.shape, np.inf)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            cx, cy = iu + dx, iv + dy
            h = _hash2(perm, cx, cy)
            px, py = cx + 0.1 + 0.8 * table[h], cy + 0.1 + 0.8 * jitter_y[h]
            d2 = (u - px) ** 2 + (v - py) ** 2
            f2 = np.minimum(f2, np.maximum(f1, d2))
            f1 = np.minimum(f1, d2)
    return np.sqrt(f1), np.sqrt(f2)


# ---------------------------------------------------------------- pattern families


def pattern_field(
    family: str, u: np.ndarray, v: np.ndarray, frequency: float, rng: np.random.Generator
) -> np.ndarray:
    """A texture field in ``[0, 1]`` of one pattern family at frame coordinates ``(u, v)``.

    ``(u, v)`` are coordinates in the frame the texture is attached to (the object's frame for
    the object, a free frame for the background); one unit is about the object's radius.
    """
    fu, fv = u * frequency, v * frequency
    warp = fractal_noise(fu * 0.5, fv * 0.5, rng, 2) - 0.5
    if family == "stripes":
        f = 0.5 + 0.5 * np.sin(2 * np.pi * (fu + 0.8 * warp))
    elif family == "spots":
        f1, _ = worley(fu * 1.3 + warp, fv * 1.3, rng)
        f = np.clip((f1 - 0.18) / 0.2, 0.0, 1.0)
    elif family == "mottling":
        f = fractal_noise(fu * 0.8, fv * 0.8, rng, 4)
        f = np.clip((f - 0.3) / 0.4, 0.0, 1.0)
    elif family == "scales":
        row = np.floor(fv * 1.5)
        col = fu * 1.5 + 0.5 * (row % 2)
        cu, cv = col - np.floor(col) - 0.5, fv * 1.5 - row
        f = np.clip(np.hypot(cu, cv) * 1.6, 0.0, 1.0)
    elif family == "veins":
        n = fractal_noise(fu * 0.7, fv * 0.7, rng, 4)
        f = np.clip(np.abs(2 * n - 1) * 4.0, 0.0, 1.0)
    elif family == "reticulation":
        f1, f2 = worley(fu + 0.5 * warp, fv, rng)
        f = np.clip((f2 - f1) / 0.25, 0.0, 1.0)
    elif family == "rings":
        f = 0.5 + 0.5 * np.sin(2 * np.pi * (np.hypot(u, v) * frequency * 1.2 + warp))
    elif family == "checks":
        s = np.sin(np.pi * (fu + 0.3 * warp)) * np.sin(np.pi * (fv - 0.3 * warp))
        f = np.clip(0.5 + 2.0 * s, 0.0, 1.0)
    else:
        raise ValueError(f"unknown pattern family {family!r}; known: {', '.join(PATTERN_FAMILIES)}")
    return f


def colourise(field: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map a ``H×W`` field in ``[0, 1]`` through a 3-colour palette to ``H×W×3`` floats."""
    t = np.clip(field, 0.0, 1.0)[..., None] * 2.0
    low = palette[0] + (palette[1] - palette[0]) * np.clip(t, 0, 1)
    return np.where(t <= 1.0, low, palette[1] + (palette[2] - palette[1]) * np.clip(t - 1, 0, 1))


# ---------------------------------------------------------------- silhouettes


def silhouette_radius(family: str, phi: np.ndarray) -> np.ndarray:
    """Boundary radius ``R(φ)`` of a shape family in its own frame (unit ≈ object radius)."""
    if family == "blob":
        return 0.9 + 0.1 * np.cos(3 * phi)
    if family == "star":
        return 0.45 + 0.55 * np.abs(np.cos(2.5 * phi)) ** 1.5
    if family == "rod":
        return 1.0 / np.sqrt(np.cos(phi) ** 2 + (3.5 * np.sin(phi)) ** 2)
    if family == "leaf":
        return 0.3 + 0.7 * np.abs(np.cos(phi)) ** 0.6
    if family == "triangle":
        sector = np.mod(phi, 2 * np.pi / 3) - np.pi / 3
        return 0.55 / np.cos(sector)
    if family == "cross":
        return 0.35 + 0.65 * np.abs(np.cos(2 * phi)) ** 4
    if family == "bilobe":
        return 0.55 + 0.45 * np.abs(np.cos(phi)) ** 0.5 - 0.2 * np.abs(np.sin(phi))
    if family == "flower":
        return 0.75 + 0.25 * np.cos(6 * phi)
    raise ValueError(f"unknown shape family {family!r}; known: {', '.join(SHAPE_FAMILIES)}")


@dataclass(frozen=True)
class Pose:
    """Where and how an object sits in the image (pixels, radians)."""

    cx: float
    cy: float
    radius: float
    angle: float
    bend: float
    deformation: tuple[float, float, float, float, float, float]


def random_pose(rng: np.random.Generator, size: int, radius_range: tuple[float, float]) -> Pose:
    """A pose with radius drawn from ``radius_range`` (fractions of the image side)."""
    radius = rng.uniform(*radius_range) * size
    margin = radius * 0.9
    return Pose(
        cx=float(rng.uniform(margin, size - margin)),
        cy=float(rng.uniform(margin, size - margin)),
        radius=float(radius),
        angle=float(rng.uniform(0.0, 2 * np.pi)),
        bend=float(rng.uniform(-0.25, 0.25)),
        deformation=tuple(float(x) for x in rng.uniform(-0.06, 0.06, size=6)),
    )


def object_frame(size: int, pose: Pose, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame coordinates ``(u, v)`` of every pixel centre, ``H×W`` each, for an object at ``pose``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = (x - pose.cx) / pose.radius, (y - pose.cy) / pose.radius
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    # The bend curves the body like a pose would; aspect stretches the class's silhouette.
    v = v - pose.bend * u * u
    return u, v * aspect


def silhouette_mask(style: ClassStyle, pose: Pose, size: int) -> np.ndarray:
    """Boolean ``H×W`` mask of a class's silhouette at ``pose``."""
    u, v = object_frame(size, pose, style.aspect)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    r = silhouette_radius(style.shape, phi)
    h = style.harmonics
    d = pose.deformation
    # Class harmonics make the family the class's own; the sample deformation varies each instance.
    scale = 1.0 + h[0] * np.cos(2 * phi) + h[1] * np.cos(3 * phi + 1.0) + h[2] * np.cos(4 * phi)
    scale += d[0] * np.cos(2 * phi + d[1] * 50) + d[2] * np.cos(3 * phi + d[3] * 50)
    scale += d[4] * np.cos(5 * phi + d[5] * 50)
    return rho < r * scale


# ---------------------------------------------------------------- scenes


def _finish(layer: np.ndarray, blur: float, noise_rng: np.random.Generator) -> np.ndarray:
    if blur > 0:
        layer = gaussian_filter(layer, sigma=(blur, blur, 0), mode="reflect")
    return layer + noise_rng.normal(0.0, 0.015, size=layer.shape)


def _to_uint8(layer: np.ndarray) -> np.ndarray:
    return np.clip(np.round(layer * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    """One rendered sample: ``image`` uint8 ``H×W×3``, ``mask`` bool ``H×W`` and the two layers."""

    image: np.ndarray
    mask: np.ndarray
    object_layer: np.ndarray
    background_layer: np.ndarray


def _compose(obj: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> Scene:
    obj8, bg8 = _to_uint8(obj), _to_uint8(bg)
    image = np.where(mask[..., None], obj8, bg8)
    return Scene(image=image, mask=mask, object_layer=obj8, background_layer=bg8)


def _object_layer(
    style: ClassStyle, pose: Pose, size: int, rng: np.random.Generator, value_shift: float = 0.0
) -> np.ndarray:
    u, v = object_frame(size, pose, 1.0)
    c, s = np.cos(style.pattern_angle), np.sin(style.pattern_angle)
    field = pattern_field(
        style.pattern, c * u + s * v, -s * u + c * v, style.pattern_frequency, rng
    )
    return colourise(field, style.palette(value_shift=value_shift))


def _rim_shaded(obj: np.ndarray, mask: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """The body darkened towards its outline by up to ``strength`` (height 0 at the rim, 1 from
    0.3 radius inside), as a rounded body turns away from the light."""
    height = np.clip(distance_transform_edt(mask) / (0.3 * radius), 0.0, 1.0)
    return obj * (1.0 - strength * (1.0 - height))[..., None]


def _shadowed(bg: np.ndarray, mask: np.ndarray, radius: float, strength: float) -> np.ndarray:
    """A soft shadow of the object on the ground, offset away from a light at the top left."""
    offset = 0.12 * radius
    shadow = shift(mask.astype(np.float64), (offset, offset), order=1, mode="constant")
    shadow = gaussian_filter(shadow, sigma=0.15 * radius)
    return bg * (1.0 - strength * shadow)[..., None]


def render_camouflaged(
    style: ClassStyle, size: int, difficulty: float, rng: np.random.Generator
) -> Scene:
    """A camouflaged scene: the object hidden in a background of its own palette
    (docs/design.md, "The micro-world").

    The background is always drawn in the object's palette (a hue jitter of ±0.03), so colour
    against the surroundings says little. ``difficulty`` ``d`` mixes the background texture:
    ``d`` parts the object's own pattern, ``1 − d`` parts generic fractal noise; it also sets the
    object size (large at 0, small at 1) and a slight blur. What gives the object away is what
    gives real animals away: a darker rim where the body turns from the light and a soft shadow
    cast on the ground, both weaker as ``d`` grows. They are shape cues a learned segmenter can
    use and a colour-contrast baseline cannot.
    """
    d = float(difficulty)
    ease = 1.0 - d
    pose = random_pose(rng, size, (0.16 + 0.12 * ease, 0.24 + 0.12 * ease))
    mask = silhouette_mask(style, pose, size)
    obj = _object_layer(style, pose, size, rng)
    obj = _rim_shaded(obj, mask, pose.radius, 0.45 * ease + 0.05)

    # The background is a free frame of the same texture at a similar scale.
    bg_pose = Pose(
        cx=float(rng.uniform(0, size)),
        cy=float(rng.uniform(0, size)),
        radius=pose.radius * float(rng.uniform(0.85, 1.2)),
        angle=float(rng.uniform(0, 2 * np.pi)),
        bend=0.0,
        deformation=(0.0,) * 6,
    )
    u, v = object_frame(size, bg_pose, 1.0)
    same = pattern_field(style.pattern, u, v, style.pattern_frequency, rng)
    other = fractal_noise(u * 1.5, v * 1.5, rng, 3)
    field = d * same + ease * other
    bg = colourise(field, style.palette(hue_shift=float(rng.uniform(-0.03, 0.03))))
    bg = _shadowed(bg, mask, pose.radius, 0.15 + 0.35 * ease)

    blur = 0.9 * d
    obj = _finish(obj, blur, rng)
    bg = _finish(bg, blur, rng)
    return _compose(obj, bg, mask)


def object_box(mask: np.ndarray, margin: float = 0.25) -> tuple[int, int, int, int] | None:
    """A square ``(y0, y1, x0, x1)`` around the mask's bounding box, ``margin`` of the box's longer
    side added on every side, clipped to the image; ``None`` when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) * (0.5 + margin)
    h, w = mask.shape
    y0, y1 = int(max(0, cy - half)), int(min(h, np.ceil(cy + half)))
    x0, x1 = int(max(0, cx - half)), int(min(w, np.ceil(cx + half)))
    return y0, y1, x0, x1


def framed(scene: Scene, size: int, margin: float = 0.25) -> Scene:
    """The scene cropped to :func:`object_box` and resized to ``size²``: a photo framed on the
    animal. Both layers are resized bilinearly and the mask by nearest neighbour, then composed
    again, so the mask stays exactly the object's pixels."""
    box = object_box(scene.mask, margin)
    if box is None:
        raise ValueError("the scene has no object to frame")
    y0, y1, x0, x1 = box
    factors = (size / (y1 - y0), size / (x1 - x0))

    def fit(layer: np.ndarray, order: int) -> np.ndarray:
        crop = layer[y0:y1, x0:x1].astype(np.float64)
        return zoom(
            crop, factors + (1,) * (crop.ndim - 2), order=order, grid_mode=True, mode="nearest"
        )

    mask = fit(scene.mask, 0) > 0.5
    return _compose(
        fit(scene.object_layer, 1) / 255.0, fit(scene.background_layer, 1) / 255.0, mask
    )


def render_salient(style: ClassStyle, size: int, rng: np.random.Generator) -> Scene:
    """A salient scene: a large object on a plain or contrasting background (the web-photo
    stand-in), shaded and casting a shadow as the camouflaged ones do."""
    pose = random_pose(rng, size, (0.3, 0.42))
    mask = silhouette_mask(style, pose, size)
    obj = _object_layer(style, pose, size, rng)
    kind = rng.integers(3)
    y = np.linspace(0.0, 1.0, size)[:, None, None]
    if kind == 0:
        grey = rng.uniform(0.75, 0.97)
        bg = np.full((size, size, 3), grey)
    elif kind == 1:
        rgb = colorsys.hsv_to_rgb((style.hue + 0.5) % 1.0, rng.uniform(0.1, 0.35), 0.9)
        bg = np.broadcast_to(np.array(rgb), (size, size, 3)).copy()
    else:
        top, bottom = rng.uniform(0.55, 0.95, size=3), rng.uniform(0.55, 0.95, size=3)
        bg = np.broadcast_to(top + (bottom - top) * y, (size, size, 3)).copy()
    # Photographed animals are shaded and cast shadows too: the same cues as in the camouflaged
    # scenes, at strengths spanning theirs.
    obj = _rim_shaded(obj, mask, pose.radius, float(rng.uniform(0.05, 0.5)))
    bg = _shadowed(bg, mask, pose.radius, float(rng.uniform(0.15, 0.5)))
    obj = _finish(obj, 0.0, rng)
    bg = _finish(bg, 0.0, rng)
    return _compose(obj, bg, mask)
