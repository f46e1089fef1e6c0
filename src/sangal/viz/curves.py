"""CMC curves of several variants in one figure, as PNG bytes.

A variant trained with several seeds is drawn as its mean curve with a shaded
min-max band, so a reader sees whether two variants' gap exceeds seed noise.
Uses matplotlib's object API with the Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

import io
import logging
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

logger = logging.getLogger(__name__)


def _as_runs(name: str, curve: np.ndarray) -> np.ndarray:
    """(S, R) fractions from a (R,) or (S, R) CMC; ValueError on shape or scale problems."""
    arr = np.asarray(curve, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
        raise ValueError(f"CMC of {name!r} must be (R,) or (S, R), got shape {np.shape(curve)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"CMC of {name!r} holds non-finite values")
    if arr.min() < 0.0 or arr.max() > 1.0 + 1e-9:
        raise ValueError(
            f"CMC of {name!r} must hold fractions in [0, 1] (as evaluate_rank returns), "
            f"got range [{arr.min():.3g}, {arr.max():.3g}]"
        )
    return arr


def cmc_figure(
    curves: Mapping[str, np.ndarray],
    max_rank: int = 20,
    title: str | None = None,
    size: tuple[float, float] = (6.4, 4.0),
    dpi: int = 110,
) -> bytes:
    """PNG of the CMC curves: one line per variant, ranks 1..max_rank, in percent.

    curves: variant -> (R,) fractions for one run, or (S, R) for S seeds (mean line,
    min-max band). Curves shorter than ``max_rank`` are drawn to their length.
    """
    if not curves:
        raise ValueError("cmc_figure needs at least one curve")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lowest = 100.0
    for name, curve in curves.items():
        runs = _as_runs(name, curve)[:, :max_rank] * 100.0  # (S, R') percent
        ranks = np.arange(1, runs.shape[1] + 1)
        mean = runs.mean(axis=0)
        label = name if runs.shape[0] == 1 else f"{name} (mean of {runs.shape[0]} seeds)"
        marker = "o" if runs.shape[1] <= 25 else None
        (line,) = ax.plot(ranks, mean, marker=marker, markersize=3, linewidth=1.6, label=label)
        if runs.shape[0] > 1:
            ax.fill_between(ranks, runs.min(axis=0), runs.max(axis=0), color=line.get_color(), alpha=0.2, linewidth=0)
        lowest = min(lowest, float(runs.min()))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xlim(0.5, max_rank + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # ranks are whole numbers
    ax.set_ylim(max(0.0, np.floor(lowest / 5.0) * 5.0 - 5.0), 100.5)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
