"""compute_distance against scipy.spatial.distance.cdist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from sangal.metrics import compute_distance


@pytest.fixture()
def feats() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((23, 16)), 3.0 * rng.standard_normal((41, 16)) + 1.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block", [4096, 7])  # one tile / ragged tiles in both directions
def test_matches_cdist(feats, metric: str, block: int) -> None:
    qf, gf = feats
    d = compute_distance(qf, gf, metric=metric, block=block)
    assert d.shape == (23, 41) and d.dtype == np.float32
    # float32 matrix-product expansion: relative error ~1e-6 on distances of order 10
    np.testing.assert_allclose(d, cdist(qf, gf, metric), rtol=1e-5, atol=1e-5)


def test_euclidean_is_plain_not_squared() -> None:
    d = compute_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]), "euclidean")
    np.testing.assert_allclose(d, [[5.0, 1.0]], atol=1e-6)


def test_cosine_range_and_scale_invariance() -> None:
    q = np.array([[1.0, 0.0]])
    g = np.array([[5.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    np.testing.assert_allclose(compute_distance(q, g, "cosine"), [[0.0, 1.0, 2.0]], atol=1e-6)


def test_torch_and_numpy_inputs_agree(feats) -> None:
    qf, gf = feats
    a = compute_distance(qf, gf, "euclidean")
    b = compute_distance(torch.from_numpy(qf).float(), torch.from_numpy(gf), "euclidean")
    assert isinstance(b, np.ndarray)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_identical_rows_are_clamped_at_zero() -> None:
    x = np.random.default_rng(1).standard_normal((5, 8))
    d = compute_distance(x, x, "euclidean")
    assert (d >= 0).all()
    assert np.abs(np.diag(d)).max() < 1e-2  # expansion rounding, never negative or NaN


def test_errors(feats) -> None:
    qf, gf = feats
    with pytest.raises(ValueError, match="unknown metric"):
        compute_distance(qf, gf, "manhattan")
    with pytest.raises(ValueError, match="feature sizes"):
        compute_distance(qf, gf[:, :8])
    with pytest.raises(ValueError, match="2-D"):
        compute_distance(qf[0], gf)
    bad = qf.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_distance(bad, gf)
    with pytest.raises(ValueError, match="block"):
        compute_distance(qf, gf, block=0)
