"""GreenPost and the GSG metric (DiffuMatting, ECCV 2024; docs/design.md, "Generation").

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
from scipy.ndimage import distance_transform_edt

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
    """Closed-form chroma-key alpha: the compositing equation ``I = αF + (1 − α)B`` solved per
    pixel by least squares over RGB, ``α = ((I − B)·(F − B)) / ‖F − B‖²``, with ``B`` the clean
    plate and ``F`` the colour of the nearest sure-foreground pixel of the trimap.

    Where ``F`` is too close to the screen colour for the projection to be stable
    (``‖F − B‖ < min_contrast``), or the trimap has no sure foreground, Vlahos' form is used:
    with ``c`` the plate's dominant channel, ``α = 1 − (I_c − max I_other) / (B_c − max B_other)``.
    """

    def __init__(self, min_contrast: float = 24.0) -> None:
        self.min_contrast = min_contrast

    @staticmethod
    def vlahos(image: np.ndarray, plate: np.ndarray) -> np.ndarray:
        c = int(np.argmax(plate.reshape(-1, 3).mean(0)))
        others = [i for i in range(3) if i != c]
        key = image[..., c] - image[..., others].max(-1)
        key_plate = plate[..., c] - plate[..., others].max(-1)
        return 1.0 - key / np.maximum(key_plate, 1.0)

    def __call__(self, image: np.ndarray, trimap: np.ndarray, plate: np.ndarray) -> np.ndarray:
        img = image.astype(np.float64)
        alpha = self.vlahos(img, plate)
        sure = trimap == 255
        if sure.any():
            _, (iy, ix) = distance_transform_edt(~sure, return_indices=True)
            d = img[iy, ix] - plate
            norm2 = (d**2).sum(-1)
            stable = norm2 >= self.min_contrast**2
            projected = ((img - plate) * d).sum(-1) / np.maximum(norm2, 1e-6)
            alpha = np.where(stable, projected, alpha)
        return np.clip(alpha, 0.0, 1.0)


def largest_region(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 8-connected region of a bool ``H×W`` mask, and how many regions it had."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask, n - 1
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return labels == largest, n - 1


def keep_attached(alpha: np.ndarray, core: np.ndarray, threshold: float) -> np.ndarray:
    """``alpha`` (float ``H×W``) with every 8-connected region of ``alpha ≥ threshold`` that does
    not touch ``core`` (bool ``H×W``) set to 0; without a core, the largest region is kept."""
    n, labels = cv2.connectedComponents((alpha >= threshold).astype(np.uint8), connectivity=8)
    if n <= 2:
        return alpha
    keep = np.unique(labels[core & (labels > 0)])
    kept = np.isin(labels, keep) if keep.size else largest_region(labels > 0)[0]
    return np.where((labels > 0) & ~kept, 0.0, alpha)


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

    With ``attached`` (this package's addition, not the paper's), the matte keeps only what is
    attached to the object: a region of the band whose alpha reaches ``attached`` but which does
    not touch the opaque core is made transparent. Such islands, a pixel or a few wide, are the
    chroma key's answer to noise of a generated canvas next to the object, not object parts.
    """

    def __init__(
        self,
        k: int = 3,
        band: int = 3,
        matting: MattingModel | None = None,
        seed: int = 0,
        attached: float | None = None,
    ) -> None:
        self.k = k
        self.band = band
        self.matting = matting if matting is not None else ChromaKeyMatting()
        self.seed = seed
        self.attached = attached

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
        if self.attached is not None:
            alpha = keep_attached(alpha, tri == 255, self.attached)
        a = alpha[..., None]
        fg = np.where(a > 1e-3, (image - (1 - a) * plate) / np.maximum(a, 1e-3), 0.0)
        fg = np.clip(np.round(fg), 0, 255).astype(np.uint8)
        return GreenPostResult(
            fg, alpha.astype(np.float32), plate, colour, float(np.linalg.norm(colour - PURE_GREEN))
        )
