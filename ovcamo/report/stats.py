"""Gains between the loop's runs with intervals: a paired, two-level bootstrap over seeds and samples.

Every run of one seed starts from the same initialisation and sees the same real batches, and every
run is scored on the same samples, so differences are taken pairwise. A bootstrap replicate draws
the seeds with replacement and, independently, the samples with replacement, and recomputes each
run's mean over the drawn seeds and samples; the interval is the 2.5th to 97.5th percentile of the
replicates (a percentile interval). Drawing seeds catches training noise, drawing samples catches
which test images happened to be rendered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95 % percentile interval."""

    value: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def format(self, percent: bool = False) -> str:
        if percent:
            return f"{self.value:.0%} (95 % CI {self.low:.0%} to {self.high:.0%})"
        return f"{self.value:+.3f} (95 % CI {self.low:+.3f} to {self.high:+.3f})"


@dataclass(frozen=True)
class Gains:
    """``oracle`` = real extra − without, ``synthetic`` = with − without, ``share`` = synthetic /
    oracle (meaningful only when the oracle interval excludes 0)."""

    oracle: Estimate
    synthetic: Estimate
    share: Estimate
    seeds: int
    samples: int
    replicates: int


def paired_gains(
    runs: Mapping[str, np.ndarray],
    control: str = "without",
    oracle: str = "real",
    treated: str = "with",
    replicates: int = 2000,
    seed: int = 0,
) -> Gains:
    """Gains of ``oracle`` and ``treated`` over ``control`` from per-sample scores.

    ``runs[name]``: float ``(seeds, samples)``, row ``i`` the same seed and column ``j`` the same
    sample in every run.
    """
    arrays = {k: np.asarray(runs[k], dtype=np.float64) for k in (control, oracle, treated)}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or 0 in next(iter(shapes)):
        raise ValueError(f"runs must be equal, non-empty (seeds, samples) arrays, got {shapes}")
    n_seeds, n_samples = next(iter(shapes))
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(n_seeds, size=(replicates, n_seeds))
    sample_idx = rng.integers(n_samples, size=(replicates, n_samples))

    def means(a: np.ndarray) -> np.ndarray:
        # Mean over drawn seeds of the mean over drawn samples, per replicate.
        per_seed = np.stack([a[:, idx].mean(axis=1) for idx in sample_idx])  # (R, seeds)
        return np.take_along_axis(per_seed, seed_idx, axis=1).mean(axis=1)

    m = {k: means(a) for k, a in arrays.items()}
    full = {k: float(a.mean()) for k, a in arrays.items()}
    oracle_r = m[oracle] - m[control]
    treated_r = m[treated] - m[control]
    with np.errstate(divide="ignore", invalid="ignore"):
        share_r = treated_r / oracle_r

    def estimate(value: float, reps: np.ndarray) -> Estimate:
        reps = reps[np.isfinite(reps)]
        low, high = np.percentile(reps, [2.5, 97.5]) if reps.size else (np.nan, np.nan)
        return Estimate(float(value), float(low), float(high))

    oracle_gain = full[oracle] - full[control]
    treated_gain = full[treated] - full[control]
    share = treated_gain / oracle_gain if oracle_gain else float("nan")
    return Gains(
        oracle=estimate(oracle_gain, oracle_r),
        synthetic=estimate(treated_gain, treated_r),
        share=estimate(share, share_r),
        seeds=n_seeds,
        samples=n_samples,
        replicates=replicates,
    )
