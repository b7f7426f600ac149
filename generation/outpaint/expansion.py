"""Object-expansion metric of salient-object-aware outpainting (CVPRW 2024;
docs/design.md, "Generation")."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: A segmenter the caller passes: RGB uint8 ``H×W×3`` → object mask or probability ``H×W``.
Segmenter = Callable[[np.ndarray], np.ndarray]


def object_expansion(
    image: np.ndarray,
    object_mask: np.ndarray,
    segmenter: Segmenter,
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
    found = np.asarray(segmenter(image))
    if found.shape != object_mask.shape:
        raise ValueError(
            f"segmenter returned a map of shape {found.shape}, expected {object_mask.shape}"
        )
    m_out = found if found.dtype == bool else found > threshold
    m_in = object_mask.astype(bool)
    return float(((m_out | m_in).sum() - m_in.sum()) / m_in.size)
