"""A prediction drawn over its image: the mask as a translucent tint with its contour, and the
predicted class with its probability in a label box (PIL and OpenCV; no matplotlib)."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Tint and contour colour (RGB) and the tint's opacity where the mask is 1.
COLOUR = (255, 96, 0)
OPACITY = 0.45


def overlay_prediction(image: np.ndarray, mask: np.ndarray, label: str) -> np.ndarray:
    """``image`` uint8 ``H×W×3`` with ``mask`` (uint8 ``H×W``, 0–255, the soft prediction) tinted in
    proportion to its value, the contour of ``mask ≥ 128`` drawn over it and ``label`` written in
    the top-left corner. Returns a new uint8 ``H×W×3`` array."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} sizes differ")
    h, w = mask.shape
    alpha = (mask.astype(np.float32) / 255.0 * OPACITY)[..., None]
    out = image.astype(np.float32) * (1 - alpha) + np.array(COLOUR, np.float32) * alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(
        (mask >= 128).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    thickness = max(1, round(min(h, w) / 250))
    cv2.drawContours(out, contours, -1, COLOUR, thickness, lineType=cv2.LINE_AA)

    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, round(min(h, w) / 24)))
    pad = max(2, thickness * 2)
    left, top, right, bottom = draw.textbbox((pad, pad), label, font=font)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text((pad, pad), label, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)
