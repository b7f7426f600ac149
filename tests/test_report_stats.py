"""Paired bootstrap gains of the loop report."""

from __future__ import annotations

import numpy as np
import pytest

from ovcamo.report.stats import paired_gains


def _runs(oracle: float, synthetic: float, noise: float, seeds: int = 3, samples: int = 60):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=samples)  # per-sample difficulty shared by every run

    def arm(shift: float) -> np.ndarray:
        return base + shift + rng.normal(0, noise, size=(seeds, samples))

    return {"without": arm(0.0), "real": arm(oracle), "with": arm(synthetic)}


def test_a_clear_gain_has_an_interval_that_excludes_zero() -> None:
    g = paired_gains(_runs(0.10, 0.05, 0.02))
    assert g.oracle.value == pytest.approx(0.10, abs=0.01)
    assert g.oracle.excludes_zero and g.oracle.low < g.oracle.value < g.oracle.high
    assert g.synthetic.excludes_zero
    assert g.share.value == pytest.approx(0.5, abs=0.1)
    assert g.seeds == 3 and g.samples == 60


def test_no_gain_gives_an_interval_around_zero() -> None:
    g = paired_gains(_runs(0.0, 0.0, 0.05))
    assert not g.oracle.excludes_zero and not g.synthetic.excludes_zero


def test_pairing_removes_the_shared_sample_difficulty() -> None:
    # Unpaired, the sample spread (0.2..0.8) would swamp a 0.03 gain; paired it does not.
    g = paired_gains(_runs(0.03, 0.0, 0.005))
    assert g.oracle.excludes_zero and g.oracle.high - g.oracle.low < 0.02


def test_shapes_are_checked() -> None:
    runs = _runs(0.1, 0.1, 0.01)
    runs["real"] = runs["real"][:, :10]
    with pytest.raises(ValueError, match="seeds, samples"):
        paired_gains(runs)
