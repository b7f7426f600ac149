"""Gains between the loop's runs with intervals over paired seeds.

Every run of one seed starts from the same initialisation and sees the same real batches, and every
run is scored on the same samples, so differences are taken pairwise: for each seed, the mean over
its samples of (treated − control). These per-seed differences already carry the sample-level
noise (each is a mean over one seed's samples) and the training noise (one per seed); the seeds are
the independent units, and with as few as 2–5 of them the interval must be Student's t on
``n_seeds − 1`` degrees of freedom. A ratio of two paired gains (the share of the oracle's gain)
gets Fieller's interval, built from the same per-seed differences and the same t quantile; it is
unbounded when the denominator is not clearly away from 0. One seed gives no interval at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t

LEVEL = 0.95


def t_interval(d: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t interval of paired differences, vectorised over leading axes.

    ``d``: float ``(..., n)``, the last axis the ``n`` independent paired units (seeds).
    Returns ``(mean, low, high)``, each ``(...)``; ``low``/``high`` are NaN where ``n < 2``.
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.shape[-1]
    mean = d.mean(axis=-1)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = student_t.ppf(0.5 + level / 2, n - 1) * d.std(axis=-1, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def fieller(
    x: np.ndarray, y: np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fieller's interval for ``mean(x) / mean(y)`` from paired units, vectorised.

    ``x``, ``y``: float ``(..., n)``, unit ``i`` (a seed) paired in both. The set is every ``r``
    with ``(x̄ − r ȳ)² ≤ t² · var(x̄ − r ȳ)``, ``t`` the two-sided quantile on ``n − 1`` degrees of
    freedom and the variance from the sample covariance of ``(x, y)`` over units / n.
    Returns ``(ratio, low, high, bounded)``, each ``(...)``: where ``bounded`` the set is
    ``[low, high]``; elsewhere (ȳ's own t-interval includes 0) it is unbounded, ``low``/``high``
    NaN. All NaN where ``n < 2``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.shape[-1]
    a, b = x.mean(axis=-1), y.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a / b
    if n < 2:
        nan = np.full_like(a, np.nan)
        return ratio, nan, nan, np.zeros(a.shape, dtype=bool)
    t2 = student_t.ppf(0.5 + level / 2, n - 1) ** 2
    vxx = x.var(axis=-1, ddof=1) / n
    vyy = y.var(axis=-1, ddof=1) / n
    vxy = ((x - a[..., None]) * (y - b[..., None])).sum(axis=-1) / (n - 1) / n
    # (b² − t² vyy) r² − 2 (a b − t² vxy) r + (a² − t² vxx) ≤ 0
    qa = b * b - t2 * vyy
    qb = a * b - t2 * vxy
    qc = a * a - t2 * vxx
    bounded = qa > 0
    # Where qa > 0 the roots are real: r = x̄ / ȳ itself satisfies the inequality.
    disc = np.maximum(qb * qb - qa * qc, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(bounded, (qb - np.sqrt(disc)) / qa, np.nan)
        high = np.where(bounded, (qb + np.sqrt(disc)) / qa, np.nan)
    return ratio, low, high, bounded


@dataclass(frozen=True)
class Estimate:
    """A point estimate over ``n`` paired seeds and its 95 % interval; ``low``/``high`` NaN and
    ``why_none`` set when there is no finite interval (one seed, or an unbounded ratio)."""

    value: float
    low: float
    high: float
    n: int
    why_none: str = ""

    @property
    def excludes_zero(self) -> bool:
        return not self.why_none and (self.low > 0 or self.high < 0)

    def format(self, percent: bool = False) -> str:
        fmt = "{:.0%}" if percent else "{:+.3f}"
        value = "n/a" if self.value != self.value else fmt.format(self.value)
        if self.why_none:
            return f"{value} (no interval: {self.why_none})"
        return f"{value} (95 % CI {fmt.format(self.low)} to {fmt.format(self.high)})"


def _one_seed(n: int) -> str:
    return "1 seed" if n == 1 else "no seed"


def paired_difference(treated: np.ndarray, control: np.ndarray) -> Estimate:
    """Mean of ``treated − control`` with its Student-t interval over the paired seeds.

    ``treated``, ``control``: float ``(seeds,)`` (one score per seed) or ``(seeds, samples)``
    (per-sample scores, same samples in both); each seed's difference is its mean over samples.
    """
    d = np.asarray(treated, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    if d.ndim == 2:
        d = d.mean(axis=1)
    n = d.shape[0]
    if n < 2:
        return Estimate(float(d.mean()) if n else float("nan"), np.nan, np.nan, n, _one_seed(n))
    mean, low, high = t_interval(d)
    return Estimate(float(mean), float(low), float(high), n)


def paired_ratio(x: np.ndarray, y: np.ndarray) -> Estimate:
    """``mean(x) / mean(y)`` with Fieller's interval; ``x``, ``y``: float ``(seeds,)`` paired
    per-seed differences."""
    n = len(x)
    ratio, low, high, bounded = fieller(x, y)
    ratio = float(ratio) if np.isfinite(ratio) else float("nan")
    if n < 2:
        return Estimate(ratio, np.nan, np.nan, n, _one_seed(n))
    if not bounded:
        return Estimate(ratio, np.nan, np.nan, n, "unbounded, the denominator's interval holds 0")
    return Estimate(ratio, float(low), float(high), n)


@dataclass(frozen=True)
class Gains:
    """``oracle`` = real extra − without, ``synthetic`` = with − without, ``share`` = synthetic /
    oracle (Fieller; meaningful only when the oracle interval excludes 0)."""

    oracle: Estimate
    synthetic: Estimate
    share: Estimate
    seeds: int
    samples: int

    @property
    def method(self) -> str:
        """The interval in words, for the report."""
        if self.seeds < 2:
            return (
                f"with {self.seeds} seed there is no interval (a Student-t interval over seeds "
                "needs at least 2)"
            )
        return (
            f"95 % Student-t interval over {self.seeds} paired seeds ({self.seeds - 1} degrees "
            f"of freedom; each seed's gain is its mean over the {self.samples} samples), and "
            "Fieller's interval for the share"
        )


def paired_gains(
    runs: Mapping[str, np.ndarray],
    control: str = "without",
    oracle: str = "real",
    treated: str = "with",
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
    oracle_d = (arrays[oracle] - arrays[control]).mean(axis=1)
    treated_d = (arrays[treated] - arrays[control]).mean(axis=1)
    return Gains(
        oracle=paired_difference(oracle_d, np.zeros(n_seeds)),
        synthetic=paired_difference(treated_d, np.zeros(n_seeds)),
        share=paired_ratio(treated_d, oracle_d),
        seeds=n_seeds,
        samples=n_samples,
    )
