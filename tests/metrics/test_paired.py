"""Paired comparisons: the seeds an interval needs and the paired bootstrap over query identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t

from sangal.metrics.paired import bootstrap_paired, seeds_needed


@pytest.mark.parametrize(("sd", "half"), [(7.0, 3.0), (7.0, 1.0), (2.5, 2.0), (1.0, 3.0), (0.3, 1.0)])
def test_seeds_needed_is_the_smallest_n_whose_t_interval_fits(sd: float, half: float) -> None:
    n = seeds_needed(sd, half)

    def width(k: int) -> float:
        return t.ppf(0.975, k - 1) * sd / math.sqrt(k)

    assert n >= 2 and width(n) <= half
    assert n == 2 or width(n - 1) > half


def test_seeds_needed_for_the_readme_spread() -> None:
    # paired sd 7 points: ±3 needs 24 seeds (t_{0.975,23} = 2.069 -> 2.96), not the normal approximation's 21
    assert seeds_needed(7.0, 3.0) == 24
    assert seeds_needed(0.0, 1.0) == 2
    assert seeds_needed(math.nan, 3.0) is None and seeds_needed(None, 3.0) is None


def test_bootstrap_is_paired_a_constant_shift_has_no_spread() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(60) * 100  # queries vary a lot ...
    boot = bootstrap_paired(a, a + 2.5, np.arange(60) // 2)  # ... but the difference is the same everywhere
    assert boot.diff == pytest.approx(2.5)
    assert boot.lo == pytest.approx(2.5) and boot.hi == pytest.approx(2.5) and boot.sd == pytest.approx(0, abs=1e-9)


def test_bootstrap_resamples_identities_not_queries() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(1.0, 5.0, 40)  # one value per identity
    one = bootstrap_paired(np.zeros(40), d, np.arange(40), resamples=500, seed=3)
    # every identity's query twice: drawn together, so the distribution is exactly the same
    two = bootstrap_paired(np.zeros(80), np.repeat(d, 2), np.repeat(np.arange(40), 2), resamples=500, seed=3)
    assert (one.lo, one.hi, one.sd) == pytest.approx((two.lo, two.hi, two.sd), abs=1e-12)
    # ... whereas treating the 80 queries as independent would shrink the sd by about sqrt(2)
    loose = bootstrap_paired(np.zeros(80), np.repeat(d, 2), np.arange(80), resamples=500, seed=3)
    assert loose.sd < 0.85 * two.sd


def test_bootstrap_sd_matches_the_standard_error() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(0.0, 10.0, 200)
    boot = bootstrap_paired(np.zeros(200), d, np.arange(200), resamples=2000, seed=0)
    assert boot.sd == pytest.approx(d.std(ddof=1) / math.sqrt(200), rel=0.1)
    assert boot.lo < boot.diff < boot.hi
    again = bootstrap_paired(np.zeros(200), d, np.arange(200), resamples=2000, seed=0)
    assert (again.lo, again.hi) == (boot.lo, boot.hi)  # a pure function of its seed


def test_bootstrap_over_several_seeds_uses_their_mean() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 30)), rng.random((3, 30))
    many = bootstrap_paired(a, b, np.arange(30), seed=5)
    mean = bootstrap_paired(a.mean(0), b.mean(0), np.arange(30), seed=5)
    assert (many.diff, many.lo, many.hi) == pytest.approx((mean.diff, mean.lo, mean.hi))
    with pytest.raises(ValueError, match="equal shapes"):
        bootstrap_paired(a, b[:, :20], np.arange(30))
