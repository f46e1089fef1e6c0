"""What a gallery index must satisfy beyond its hashes: paths inside the gallery, usable numbers.

A sha256 shows that a file is what was written; it cannot show that what was written makes sense, nor
that an edited meta.json keeps to its gallery. :mod:`sangal.search.index` applies these checks when it
writes an index (refusing features a search could not rank) and when it loads one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sangal.errors import CacheError, printable

__all__ = ["NORM_TOLERANCE", "REBUILD", "are_probabilities", "bad_rows", "check_features", "relative_paths"]

REBUILD = "rebuild the index with `sangal index`"
NORM_TOLERANCE = 1e-3  # |norm^2 - 1| of a stored feature row, |row sum - 1| of probabilities (float32: ~1e-6)


def relative_paths(meta: dict[str, Any], meta_path: Path) -> list[str]:
    """The gallery paths of meta.json; CacheError for one that is absolute, climbs out with ``..`` or is not text."""
    paths = meta["paths"]
    if not isinstance(paths, list):
        raise CacheError(f"{meta_path}: 'paths' is not a list; {REBUILD}")
    for i, p in enumerate(paths):  # string tests: a Path per entry would cost 0.1 s on a Market-size gallery
        if not isinstance(p, str) or not p or p.startswith("/") or "\\" in p or ".." in p.split("/"):
            raise CacheError(f"{meta_path}: paths[{i}] {printable(repr(p))} is not a path inside the gallery (an "
                             f"index lists images relative to it, without '..'); {REBUILD}")
    return list(paths)


def check_features(path: Path, features: np.ndarray, paths: list[str], dim: int | None) -> None:
    """What a hash cannot catch: the shape meta.json implies, finite unit rows (cosine = dot product)."""
    if features.ndim != 2 or features.shape[0] != len(paths) or features.dtype != np.float32 \
            or (dim is not None and features.shape[1] != dim):
        raise CacheError(f"{path}: shape {features.shape} {features.dtype} does not fit {len(paths)} paths of "
                         f"{dim} dims in meta.json; {REBUILD}")
    bad = bad_rows(features)
    if bad.size:
        i = int(bad[0])
        raise CacheError(f"{path}: {bad.size} of {len(paths)} feature rows are not finite unit vectors (first: row "
                         f"{i}, {printable(paths[i])}); {REBUILD}")


def bad_rows(features: np.ndarray) -> np.ndarray:
    """Rows of (N, D) ``features`` that are not finite unit vectors."""
    sq = np.einsum("ij,ij->i", features, features)  # (N,) squared norms; NaN/inf rows stay non-finite
    return np.flatnonzero(~(np.abs(sq - 1.0) <= NORM_TOLERANCE))


def are_probabilities(p: np.ndarray) -> bool:
    """(N, C) finite, non-negative rows that sum to 1."""
    if not len(p):
        return True
    return bool(np.isfinite(p).all() and p.min() >= 0 and np.abs(p.sum(axis=1) - 1).max() <= NORM_TOLERANCE)
