"""Paired comparison of two training variants: over seeds (Student t) and over test queries (bootstrap).

With paired seeds (same initialisation of the shared layers, same batch order) the
seed-to-seed spread that both variants share cancels in the per-seed difference, so
the interval on the mean difference is much narrower than the two variants' stds
suggest. The 95 % interval is mean ± t_{0.975, n-1} * sd / sqrt(n); with one seed
there is no interval (NaN bounds).

The seed-level interval is conditional on the test set: it measures training noise only.
:func:`bootstrap_paired` measures the other source, test sampling: how much a difference
would move with another draw of test identities of the same size (query identities
resampled with replacement, the same resample for both variants). :func:`seeds_needed`
turns a paired sd into the number of seeds an interval of a given half-width needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapDiff", "PairedDiff", "bootstrap_paired", "paired_difference", "seeds_needed"]


@dataclass(frozen=True)
class PairedDiff:
    """Mean of ``b - a`` over paired seeds, its 95 % t interval, the sd of the differences and n."""

    diff: float
    lo: float
    hi: float
    sd: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """Mean paired difference ``b - a`` with its ``confidence`` t interval.

    Raises:
        ValueError: the two sequences differ in length or are empty.
    """
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or a_arr.size == 0:
        raise ValueError(f"paired values need two equal-length, non-empty lists; got {a_arr.shape} and {b_arr.shape}")
    d = b_arr - a_arr
    n = int(d.size)
    mean = float(d.mean())
    if n < 2:
        return PairedDiff(mean, math.nan, math.nan, math.nan, n)
    from scipy.stats import t

    sd = float(d.std(ddof=1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedDiff(mean, mean - half, mean + half, sd, n)


def seeds_needed(sd: float, half_width: float, confidence: float = 0.95, max_n: int = 100_000) -> int | None:
    """Fewest paired seeds n whose t interval, mean ± t_{(1+c)/2, n-1} sd / sqrt(n), is at most ± ``half_width``.

    t depends on n, so n is found by iterating from 2 upwards (the normal approximation
    z sd / sqrt(n) would undercount small n). ``sd`` is the paired sd of one seed's difference,
    as measured; None where it is unknown (NaN, fewer than 2 seeds) or over ``max_n``.
    """
    if sd is None or not math.isfinite(sd) or half_width <= 0:
        return None
    if sd == 0:
        return 2
    from scipy.stats import t

    n = max(2, math.ceil((float(t.ppf(0.5 + confidence / 2, 1e9)) * sd / half_width) ** 2))  # z bound: n >= this
    while n <= max_n:
        if float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) <= half_width:
            return n
        n += 1
    return None


@dataclass(frozen=True)
class BootstrapDiff:
    """Mean of ``b - a`` on the test set as measured, its percentile interval and sd over resamples."""

    diff: float
    lo: float
    hi: float
    sd: float
    resamples: int


def bootstrap_paired(a: np.ndarray, b: np.ndarray, groups: Sequence[int], resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> BootstrapDiff:
    """Paired bootstrap over groups (query identities) of the difference of means ``mean(b) - mean(a)``.

    Args:
        a, b: (Q,) or (S, Q) per-query values (e.g. AP, Rank-1 hit) of the reference and the variant,
            in the same query order; with S rows (seeds on one test set), the statistic is the mean
            over rows, and every row sees the same resample.
        groups: (Q,) group of each query; whole groups are drawn with replacement and each query
            weighs as often as its group was drawn.
        seed: the resampling generator's seed (the result is a pure function of it).
    """
    a_arr, b_arr = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    g = np.asarray(groups)
    if a_arr.shape != b_arr.shape or a_arr.shape[1] != g.shape[0] or g.size == 0:
        raise ValueError(f"per-query values need equal shapes matching the groups; got {a_arr.shape}, "
                         f"{b_arr.shape} and {g.shape[0]} groups")
    d = (b_arr - a_arr).mean(axis=0)  # (Q,): the mean over seeds of each query's difference
    _, index = np.unique(g, return_inverse=True)  # (Q,) group index
    n_groups = int(index.max()) + 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples)  # (B, n_groups)
    weights = counts[:, index].astype(np.float64)  # (B, Q)
    stats = (weights @ d) / weights.sum(axis=1)  # (B,)
    tail = 100.0 * (1.0 - confidence) / 2
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return BootstrapDiff(float(d.mean()), float(lo), float(hi), float(stats.std(ddof=1)), int(resamples))
