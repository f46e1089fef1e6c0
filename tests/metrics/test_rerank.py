"""re_ranking (sparse, blockwise) against a dense float64 transcription of the published
k-reciprocal re-ranking code (Zhong et al., CVPR 2017, zhunzhong07/person-re-ranking)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import sangal.metrics.rerank as rerank_mod
from sangal.metrics import compute_distance, evaluate_rank, re_ranking


def dense_re_ranking(
    qf: np.ndarray, gf: np.ndarray, k1: int, k2: int, lambda_value: float
) -> np.ndarray:
    """The published algorithm, line by line, with dense float64 (Q+G)^2 matrices."""
    query_num = qf.shape[0]
    feat = np.concatenate([qf, gf]).astype(np.float64)
    all_num = feat.shape[0]
    original_dist = cdist(feat, feat) ** 2
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, kind="stable")
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for candidate in k_reciprocal_index:
            half = int(np.around(k1 / 2.0)) + 1
            cand_forward = initial_rank[candidate, :half]
            cand_backward = initial_rank[cand_forward, :half]
            fi_candidate = np.where(cand_backward == candidate)[0]
            cand_k_reciprocal_index = cand_forward[fi_candidate]
            if len(np.intersect1d(cand_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                cand_k_reciprocal_index
            ):
                k_reciprocal_expansion_index = np.append(
                    k_reciprocal_expansion_index, cand_k_reciprocal_index
                )
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(all_num):
            V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist)
    for i in range(query_num):
        temp_min = np.zeros(all_num)
        for j in np.where(V[i] != 0)[0]:
            temp_min[inv_index[j]] += np.minimum(V[i, j], V[inv_index[j], j])
        jaccard_dist[i] = 1 - temp_min / (2 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:, query_num:]


def clustered(seed: int, num_q: int = 20, num_g: int = 60, num_ids: int = 8, dim: int = 16):
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.standard_normal((num_ids, dim))
    q_ids, g_ids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    qf = centres[q_ids] + rng.standard_normal((num_q, dim))
    gf = centres[g_ids] + rng.standard_normal((num_g, dim))
    return qf, gf, q_ids, g_ids


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (7, 3, 0.5), (5, 1, 0.0)])
def test_matches_dense_reference(seed: int, k1: int, k2: int, lam: float) -> None:
    qf, gf, _, _ = clustered(seed)
    out = re_ranking(qf, gf, k1=k1, k2=k2, lambda_value=lam)
    assert out.shape == (20, 60) and out.dtype == np.float32
    np.testing.assert_allclose(out, dense_re_ranking(qf, gf, k1, k2, lam), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k1,k2", [(20, 6), (1, 1), (3, 9)])
def test_fewer_items_than_neighbours(k1: int, k2: int) -> None:
    # 5 items in all: every neighbour list is cut at the data size, as slicing does in the
    # reference (k2 = 9 averages over all 5 rows).
    rng = np.random.default_rng(3)
    qf, gf = rng.standard_normal((2, 4)), rng.standard_normal((3, 4))
    expected = dense_re_ranking(qf, gf, k1, k2, 0.3)
    np.testing.assert_allclose(re_ranking(qf, gf, k1=k1, k2=k2), expected, atol=1e-5, rtol=0)


def test_small_blocks_give_the_same_result(monkeypatch) -> None:
    # Tiny working blocks: every blockwise loop (distances, reciprocity, expansion, pair
    # distances outside the neighbour lists, Jaccard) runs over many blocks.
    qf, gf, _, _ = clustered(5)
    expected = dense_re_ranking(qf, gf, 20, 6, 0.3)
    monkeypatch.setattr(rerank_mod, "_BLOCK_ELEMENTS", 97)
    np.testing.assert_allclose(re_ranking(qf, gf), expected, atol=1e-5, rtol=0)


def test_cosine_equals_euclidean_on_normalised_features() -> None:
    qf, gf, _, _ = clustered(1)
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    out = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), metric="cosine")
    np.testing.assert_allclose(out, dense_re_ranking(qn, gn, 20, 6, 0.3), atol=1e-5, rtol=0)


def test_lambda_one_is_row_normalised_squared_distance() -> None:
    # final = original distance, divided per query row by its max over ALL Q+G items
    qf, gf, _, _ = clustered(2)
    sq = cdist(qf, np.concatenate([qf, gf])) ** 2
    expected = sq[:, len(qf) :] / sq.max(axis=1, keepdims=True)
    np.testing.assert_allclose(re_ranking(qf, gf, lambda_value=1.0), expected, atol=1e-5)


def test_improves_map_on_clustered_data() -> None:
    # Overlapping Gaussian identity clusters (8 gallery images per id): plain distance mixes
    # neighbouring ids (mAP about 0.74), k-reciprocal neighbourhoods separate them (about 0.94).
    rng = np.random.default_rng(7)
    num_ids, dim = 30, 32
    centres = rng.standard_normal((num_ids, dim))
    g_ids = np.repeat(np.arange(num_ids), 8)
    q_ids = np.repeat(np.arange(num_ids), 2)
    gf = centres[g_ids] + rng.standard_normal((len(g_ids), dim))
    qf = centres[q_ids] + rng.standard_normal((len(q_ids), dim))
    q_cams, g_cams = np.zeros(len(q_ids), int), np.ones(len(g_ids), int)
    plain = evaluate_rank(compute_distance(qf, gf, "euclidean"), q_ids, g_ids, q_cams, g_cams)
    rr = evaluate_rank(re_ranking(qf, gf), q_ids, g_ids, q_cams, g_cams)
    assert plain.mAP < 0.9  # the task is not already solved
    assert rr.mAP > plain.mAP + 0.1


def test_errors() -> None:
    qf, gf, _, _ = clustered(0)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(qf, gf, k1=0)
    with pytest.raises(ValueError, match="lambda"):
        re_ranking(qf, gf, lambda_value=1.5)
    with pytest.raises(ValueError, match="feature sizes"):
        re_ranking(qf, gf[:, :4])
    with pytest.raises(ValueError, match="unknown metric"):
        re_ranking(qf, gf, metric="l1")
