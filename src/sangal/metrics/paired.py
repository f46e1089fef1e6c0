"""Paired comparison of two training variants over the same seeds (Student t interval).

With paired seeds (same initialisation of the shared layers, same batch order) the
seed-to-seed spread that both variants share cancels in the per-seed difference, so
the interval on the mean difference is much narrower than the two variants' stds
suggest. The 95 % interval is mean ± t_{0.975, n-1} * sd / sqrt(n); with one seed
there is no interval (NaN bounds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDiff", "paired_difference"]


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
