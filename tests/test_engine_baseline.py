"""The colour-contrast baseline: what it sees, and its class-agnostic scores."""

from __future__ import annotations

import numpy as np
import pytest

from ovcamo.data.io import encode_png
from ovcamo.engine.baseline import contrast_map, score_baseline
from ovcamo.metrics.functional import sample_scores
from ovcamo.metrics.summary import summarize


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image = rng.normal(90, 8, size=(48, 48, 3)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[14:30, 18:36] = True
    image[mask] = (200, 60, 40)
    return image, mask


def test_contrast_map_lights_up_a_colour_unlike_the_border() -> None:
    image, mask = _scene(np.random.default_rng(0))
    m = contrast_map(image)
    assert m.dtype == np.uint8 and m.shape == mask.shape
    assert m[mask].mean() > 200 and m[~mask].mean() < 60
    # An object in the background's own colour is invisible to it.
    same = image.copy()
    same[mask] = np.random.default_rng(1).normal(90, 8, size=(int(mask.sum()), 3)).clip(0, 255)
    assert contrast_map(same)[mask].mean() < 128
    with pytest.raises(ValueError, match="H×W×3"):
        contrast_map(image[..., 0])


def test_score_baseline_is_the_agnostic_summary_of_its_maps(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pairs, rows = [], []
    for i in range(3):
        image, mask = _scene(rng)
        (tmp_path / f"{i}.png").write_bytes(encode_png(image))
        (tmp_path / f"{i}_m.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
        pairs.append((tmp_path / f"{i}.png", tmp_path / f"{i}_m.png"))
        rows.append(sample_scores(contrast_map(image), mask).to_vector())
    scores = score_baseline(pairs)
    expected = summarize(np.stack(rows))
    assert scores["samples"] == 3
    assert set(scores) == {k for k in expected if k.startswith("agnostic_")} | {"samples"}
    for k, v in scores.items():
        if k != "samples":
            assert v == pytest.approx(expected[k])
    assert scores["agnostic_IoU"] > 0.6
    with pytest.raises(ValueError, match="no samples"):
        score_baseline([])
