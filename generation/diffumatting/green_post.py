"""GreenPost and the GSG metric (DiffuMatting, ECCV 2024, DESIGN §7).

GreenPost turns a green-canvas generation and its coarse object mask into an RGBA object:
K-means finds the background colour among the pixels outside the coarse mask, a clean plate (the
background as it would look without the object) is built from it, and an alpha matte is pulled in
the uncertain band around the coarse mask — by closed-form chroma keying by default, or by any
:class:`MattingModel` the caller plugs in. The foreground colour is then unmixed from the plate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

PURE_GREEN = np.array([0.0, 255.0, 0.0])


def dominant_colour(
    pixels: np.ndarray, k: int = 3, seed: int = 0, max_pixels: int = 20000
) -> np.ndarray:
    """Centre of the largest K-means cluster of ``pixels`` (``N×3``, 0–255); float ``3``."""
    if len(pixels) == 0:
        raise ValueError("no pixels to cluster: the coarse mask covers the whole image")
    if len(pixels) > max_pixels:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    data = np.ascontiguousarray(pixels, dtype=np.float32)
    k = min(k, len(np.unique(data, axis=0)))
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.5)
    _, labels, centres = cv2.kmeans(data, k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    counts = np.bincount(labels.ravel(), minlength=k)
    return centres[int(np.argmax(counts))].astype(np.float64)


def gsg(image: np.ndarray, object_mask: np.ndarray, k: int = 3, seed: int = 0) -> float:
    """GSG (green-screen generation) distance: Euclidean distance, in 0–255 RGB units, of the
    dominant K-means background colour to pure green (0, 255, 0). 0 is a perfect green screen;
    the largest possible value is 255·√3 ≈ 441.7.

    ``image``: RGB uint8 ``H×W×3``; ``object_mask``: bool ``H×W`` (pixels excluded from the
    background).
    """
    colour = dominant_colour(image[~object_mask].reshape(-1, 3), k, seed)
    return float(np.linalg.norm(colour - PURE_GREEN))


@runtime_checkable
class MattingModel(Protocol):
    """A matting model GreenPost can use instead of chroma keying.

    Called with the RGB uint8 image ``H×W×3``, a trimap uint8 ``H×W`` (0 background, 128 unknown,
    255 foreground) and the clean plate float ``H×W×3``; returns alpha float ``H×W`` in [0, 1].
    """

    def __call__(self, image: np.ndarray, trimap: np.ndarray, plate: np.ndarray) -> np.ndarray: ...


class ChromaKeyMatting:
    """Closed-form chroma-key alpha (Vlahos' form, generalised to the plate's colour).

    With ``c`` the channel of the plate that dominates (green for a green screen) and ``o`` the
    other two, ``key = I_c − a₂·max(I_o)``; alpha = ``1 − key / key_plate`` clipped to [0, 1], so a
    pixel equal to the plate is transparent and any pixel with no excess of the key colour is
    opaque. ``a₂`` (default 1) trades spill suppression against keeping yellowish and cyan
    foreground.
    """

    def __init__(self, a2: float = 1.0) -> None:
        self.a2 = a2

    def __call__(self, image: np.ndarray, trimap: np.ndarray, plate: np.ndarray) -> np.ndarray:
        img = image.astype(np.float64)
        c = int(np.argmax(plate.reshape(-1, 3).mean(0)))
        others = [i for i in range(3) if i != c]
        key = img[..., c] - self.a2 * img[..., others].max(-1)
        key_plate = plate[..., c] - self.a2 * plate[..., others].max(-1)
        alpha = 1.0 - key / np.maximum(key_plate, 1.0)
        return np.clip(alpha, 0.0, 1.0)


@dataclass
class GreenPostResult:
    """RGBA object: ``foreground`` RGB uint8 ``H×W×3`` (plate unmixed), ``alpha`` float ``H×W``,
    the ``plate`` float ``H×W×3``, the ``background_colour`` and its ``gsg`` distance."""

    foreground: np.ndarray
    alpha: np.ndarray
    plate: np.ndarray
    background_colour: np.ndarray
    gsg: float

    def rgba(self) -> np.ndarray:
        """uint8 ``H×W×4``."""
        a = np.round(self.alpha * 255).astype(np.uint8)
        return np.concatenate([self.foreground, a[..., None]], axis=-1)


class GreenPost:
    """GreenPost: coarse mask → K-means background colour → clean plate → alpha → unmixed RGBA.

    ``band`` is the half-width in pixels of the unknown region of the trimap built from the
    coarse mask: the matte is solved there, the eroded mask is opaque and everything beyond the
    dilated mask is transparent, so a foreground that happens to be green is not keyed out.
    """

    def __init__(
        self,
        k: int = 3,
        band: int = 3,
        matting: MattingModel | None = None,
        seed: int = 0,
    ) -> None:
        self.k = k
        self.band = band
        self.matting = matting if matting is not None else ChromaKeyMatting()
        self.seed = seed

    def trimap(self, coarse_mask: np.ndarray) -> np.ndarray:
        """uint8 ``H×W``: 255 inside the eroded mask, 0 beyond the dilated mask, 128 between."""
        m = coarse_mask.astype(np.uint8)
        kernel = np.ones((2 * self.band + 1, 2 * self.band + 1), np.uint8)
        tri = np.full(m.shape, 128, np.uint8)
        tri[cv2.erode(m, kernel) > 0] = 255
        tri[cv2.dilate(m, kernel) == 0] = 0
        return tri

    def __call__(self, image: np.ndarray, coarse_mask: np.ndarray) -> GreenPostResult:
        """``image``: RGB uint8 ``H×W×3`` generated on a green canvas; ``coarse_mask``: bool
        ``H×W`` (the matting head's thresholded output)."""
        if image.shape[:2] != coarse_mask.shape:
            raise ValueError(
                f"image {image.shape[:2]} and coarse mask {coarse_mask.shape} differ in size"
            )
        tri = self.trimap(coarse_mask)
        background = image[tri == 0].reshape(-1, 3)
        if len(background) == 0:
            background = image[~coarse_mask].reshape(-1, 3)
        colour = dominant_colour(background, self.k, self.seed)
        # The clean plate keeps the real background where it is seen and the dominant colour under
        # the object, so unmixing uses the local screen colour near the boundary.
        plate = np.broadcast_to(colour, image.shape).copy()
        plate[tri == 0] = image[tri == 0]
        alpha = np.asarray(self.matting(image, tri, plate), dtype=np.float64)
        alpha = np.where(tri == 255, 1.0, np.where(tri == 0, 0.0, alpha))
        a = alpha[..., None]
        fg = np.where(a > 1e-3, (image - (1 - a) * plate) / np.maximum(a, 1e-3), 0.0)
        fg = np.clip(np.round(fg), 0, 255).astype(np.uint8)
        return GreenPostResult(
            fg, alpha.astype(np.float32), plate, colour, float(np.linalg.norm(colour - PURE_GREEN))
        )
