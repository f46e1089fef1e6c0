"""Query-gallery distance matrices, computed in blocks with torch.

Two metrics, smaller = more similar:

* ``"cosine"``: ``1 - cos(q, g)`` of the L2-normalised features, in [0, 2].
* ``"euclidean"``: the plain (not squared) Euclidean distance ``||q - g||``.
  torchreid returns the squared distance; the plain one keeps the units of the
  features and gives the same ranking.  ``rerank.py`` squares it again, as the
  re-ranking reference code does.

Distances are computed in float32 with one matrix product per block
(``|q|^2 + |g|^2 - 2 q.g`` for Euclidean), on the device of the inputs, and
clamped at 0 against rounding.  That expansion loses precision for nearly
identical vectors: the Euclidean distance between two copies of a feature of
norm ``n`` comes out around ``n * 1e-3`` instead of 0, which does not change
rankings in practice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sangal import choices

__all__ = ["compute_distance"]

METRICS = choices.METRICS


def _as_features(x: Any, name: str) -> torch.Tensor:
    """(N, D) finite float32 tensor from numpy or torch; a torch input keeps its device."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(torch.float32)
    else:
        t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items, feature_dim), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def check_features(qf: Any, gf: Any, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a query/gallery feature pair and return them as float32 tensors."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    q, g = _as_features(qf, "qf"), _as_features(gf, "gf")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"qf and gf have different feature sizes: {q.shape[1]} vs {g.shape[1]}"
        )
    if q.device != g.device:
        raise ValueError(f"qf is on {q.device} but gf is on {g.device}")
    return q, g


def prepare(x: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-item precomputation: (normalised features, None) or (features, squared norms)."""
    if metric == "cosine":
        return F.normalize(x, dim=1), None
    return x, (x * x).sum(dim=1)


def block_distance(
    a: tuple[torch.Tensor, torch.Tensor | None],
    b: tuple[torch.Tensor, torch.Tensor | None],
    squared: bool = False,
) -> torch.Tensor:
    """Distances between two ``prepare``-d blocks (same metric), float32, >= 0.

    ``squared`` applies to Euclidean only: it skips the square root.
    """
    (x, xn), (y, yn) = a, b
    if xn is None:  # cosine
        return (1.0 - x @ y.T).clamp_(0.0, 2.0)
    d = torch.addmm(xn[:, None] + yn[None, :], x, y.T, alpha=-2.0).clamp_(min=0.0)
    return d if squared else d.sqrt_()


def compute_distance(qf: Any, gf: Any, metric: str = "cosine", block: int = 4096) -> np.ndarray:
    """(Q, G) float32 distance matrix between query and gallery features.

    Args:
        qf, gf: (Q, D) and (G, D) features, numpy arrays or torch tensors (same device).
        metric: ``"cosine"`` (1 - cosine similarity) or ``"euclidean"`` (plain, not squared).
        block: tile size; at most ``block x block`` distances are materialised on the
            device at a time, so large galleries fit on a GPU.
    """
    if int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    q, g = check_features(qf, gf, metric)
    out = np.empty((q.shape[0], g.shape[0]), dtype=np.float32)
    qp, gp = prepare(q, metric), prepare(g, metric)
    with torch.no_grad():
        for i in range(0, q.shape[0], block):
            qb = tuple(t[i : i + block] if t is not None else None for t in qp)
            for j in range(0, g.shape[0], block):
                gb = tuple(t[j : j + block] if t is not None else None for t in gp)
                out[i : i + block, j : j + block] = block_distance(qb, gb).cpu().numpy()
    return out
