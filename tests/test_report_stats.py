"""Intervals of the loop report: Student t over paired seeds, Fieller for the share; exact values
against scipy and coverage by simulation from a known hierarchical model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ovcamo.report.stats import fieller, paired_difference, paired_gains, paired_ratio, t_interval

# Per-seed rare-class cIoU gains of a 3-seed micro loop: the classic generator and extra real data.
SYNTHETIC = np.array([0.0085, 0.0164, 0.0001])
ORACLE = np.array([0.0115, 0.0191, 0.0072])


def test_t_interval_matches_scipy_on_hand_made_numbers() -> None:
    for d in (SYNTHETIC, ORACLE, np.array([0.2, -0.1]), np.array([1.0, 2.0, 4.0, 8.0, 16.0])):
        mean, low, high = t_interval(d)
        want = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert (low, high) == pytest.approx(want, abs=1e-12)
        assert mean == pytest.approx(d.mean())
    e = paired_difference(SYNTHETIC, np.zeros(3))
    assert e.format() == "+0.008 (95 % CI -0.012 to +0.029)" and not e.excludes_zero
    assert paired_difference(ORACLE, np.zeros(3)).format() == "+0.013 (95 % CI -0.002 to +0.028)"
    # Two levels: each seed's difference is its mean over samples.
    treated = np.array([[0.5, 0.7], [0.4, 0.4], [0.9, 0.3]])
    control = np.array([[0.4, 0.6], [0.4, 0.2], [0.5, 0.5]])
    e = paired_difference(treated, control)
    per_seed = np.array([0.1, 0.1, 0.1])
    assert (e.low, e.high) == pytest.approx((0.1, 0.1)) and e.n == 3  # no spread over seeds
    assert e.value == pytest.approx(per_seed.mean())


def test_one_seed_gives_no_interval() -> None:
    e = paired_difference(np.array([0.3]), np.array([0.1]))
    assert e.value == pytest.approx(0.2) and e.low != e.low and not e.excludes_zero
    assert e.format() == "+0.200 (no interval: 1 seed)"
    g = paired_gains({k: np.full((1, 5), v) for k, v in (("without", 0), ("real", 1), ("with", 2))})
    assert g.share.format(percent=True) == "200% (no interval: 1 seed)"
    assert "no interval" in g.method


def test_fieller_with_an_exact_denominator_is_the_t_interval_divided() -> None:
    _, low, high = t_interval(SYNTHETIC)
    e = paired_ratio(SYNTHETIC, np.full(3, 0.02))
    assert (e.value, e.low, e.high) == pytest.approx(
        (SYNTHETIC.mean() / 0.02, low / 0.02, high / 0.02)
    )


def test_fieller_endpoints_solve_its_equation() -> None:
    x = np.array([0.05, 0.07, 0.04, 0.06])
    y = np.array([0.10, 0.11, 0.09, 0.12])
    e = paired_ratio(x, y)
    t2 = stats.t.ppf(0.975, 3) ** 2
    for r in (e.low, e.high):
        z = x - r * y  # at an endpoint the t statistic of mean(x − r y) is exactly ±t
        assert z.mean() ** 2 == pytest.approx(t2 * z.var(ddof=1) / 4, rel=1e-9)
    assert (
        e.low < x.mean() / y.mean() < e.high
        and e.format(percent=True) == "52% (95 % CI 38% to 65%)"
    )


def test_share_is_unbounded_when_the_oracle_interval_holds_zero() -> None:
    e = paired_ratio(SYNTHETIC, ORACLE)
    assert e.why_none.startswith("unbounded") and not e.excludes_zero
    assert (
        e.format(percent=True) == "66% (no interval: unbounded, the denominator's interval holds 0)"
    )


def test_paired_gains_and_shape_check() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=(1, 30))  # per-sample difficulty shared by every run
    runs = {
        "without": base + 0.0 + rng.normal(0, 0.005, (3, 30)),
        "real": base + 0.10 + rng.normal(0, 0.005, (3, 30)),
        "with": base + 0.05 + rng.normal(0, 0.005, (3, 30)),
    }
    g = paired_gains(runs)
    oracle_d = (runs["real"] - runs["without"]).mean(axis=1)
    want = stats.t.interval(0.95, 2, loc=oracle_d.mean(), scale=stats.sem(oracle_d))
    assert (g.oracle.low, g.oracle.high) == pytest.approx(want)
    assert g.oracle.excludes_zero and g.synthetic.excludes_zero
    assert g.share.low < 0.5 < g.share.high and (g.seeds, g.samples) == (3, 30)
    assert g.method.startswith("95 % Student-t interval over 3 paired seeds (2 degrees")
    runs["real"] = runs["real"][:, :10]
    with pytest.raises(ValueError, match="seeds, samples"):
        paired_gains(runs)


# Coverage by simulation. Per run and seed: score = sample difficulty + the run's true gain + a
# seed effect (training noise, one per run and seed) + per-sample noise.
SIMS, SEEDS, SAMPLES = 2000, 3, 40
SEED_SD, SAMPLE_SD = 0.01, 0.01


def _experiments(rng: np.random.Generator, gains: dict[str, float]) -> dict[str, np.ndarray]:
    """``name -> (SIMS, SEEDS, SAMPLES)`` scores of many synthetic experiments."""
    base = rng.uniform(0.2, 0.8, size=(SIMS, 1, SAMPLES))
    return {
        name: base
        + gain
        + rng.normal(0, SEED_SD, (SIMS, SEEDS, 1))
        + rng.normal(0, SAMPLE_SD, (SIMS, SEEDS, SAMPLES))
        for name, gain in gains.items()
    }


def _two_level_bootstrap(d: np.ndarray, rng: np.random.Generator, replicates: int = 1000):
    """The percentile bootstrap that resamples seeds and samples (``d``: ``(sims, seeds,
    samples)`` paired differences), vectorised over experiments: ``(low, high)``, each ``(sims,)``."""
    n_seeds, n_samples = d.shape[1:]
    sample_w = rng.multinomial(n_samples, np.full(n_samples, 1 / n_samples), size=replicates)
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=replicates)
    per_seed = d @ (sample_w.T / n_samples)  # (sims, seeds, replicates)
    reps = np.einsum("nsr,rs->nr", per_seed, seed_w / n_seeds)
    low, high = np.percentile(reps, [2.5, 97.5], axis=1)
    return low, high


def test_the_t_interval_covers_the_true_gain_and_the_two_level_bootstrap_does_not() -> None:
    rng = np.random.default_rng(20240607)
    gain = 0.01
    runs = _experiments(rng, {"without": 0.0, "with": gain})
    d = runs["with"] - runs["without"]
    _, low, high = t_interval(d.mean(axis=2))
    t_cover = np.mean((low <= gain) & (gain <= high))
    boot_low, boot_high = _two_level_bootstrap(d, rng)
    boot_cover = np.mean((boot_low <= gain) & (gain <= boot_high))
    assert 0.93 <= t_cover <= 0.97, t_cover
    # Three seeds treated as the whole population: the seed spread is underestimated by
    # (n − 1) / n and the normal-like percentile ignores that it is estimated from 3 values.
    assert boot_cover < 0.85, boot_cover


def test_fieller_covers_the_true_share() -> None:
    rng = np.random.default_rng(7)
    oracle, synthetic = 0.06, 0.03
    runs = _experiments(rng, {"without": 0.0, "real": oracle, "with": synthetic})
    x = (runs["with"] - runs["without"]).mean(axis=2)
    y = (runs["real"] - runs["without"]).mean(axis=2)
    true = synthetic / oracle
    _, low, high, bounded = fieller(x, y)
    # An unbounded set holds every r whose t statistic of mean(x − r y) is within ±t.
    z = x - true * y
    inside = (
        z.mean(axis=1) ** 2 <= stats.t.ppf(0.975, SEEDS - 1) ** 2 * z.var(axis=1, ddof=1) / SEEDS
    )
    cover = np.where(bounded, (low <= true) & (true <= high), inside)
    assert np.array_equal(cover, inside)  # the bounded sets are that same set
    assert 0.93 <= cover.mean() <= 0.97, cover.mean()
    assert bounded.mean() > 0.5
