"""evaluate_rank (fast) against evaluate_rank_reference (per-query stable argsort) and a
hand-computed example of the Market-1501 protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sangal.metrics.rank as rank_mod
from sangal.metrics import RankResult, evaluate_rank, evaluate_rank_reference


def assert_same(a: RankResult, b: RankResult) -> None:
    np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-6, rtol=0)
    assert a.cmc.shape == b.cmc.shape
    assert abs(a.mAP - b.mAP) < 1e-6
    assert abs(a.mINP - b.mINP) < 1e-6
    assert (a.num_valid, a.num_skipped) == (b.num_valid, b.num_skipped)
    np.testing.assert_array_equal(a.first_rank, b.first_rank)
    np.testing.assert_allclose(a.ap, b.ap, atol=1e-9, rtol=0)


def hand_example() -> tuple[np.ndarray, ...]:
    # gallery:   g0      g1      g2      g3           g4      g5
    g_pids = np.array([1, 2, 1, 0, 2, 1])  # g3 is a distractor (pid 0)
    g_cams = np.array([0, 1, 1, 0, 0, 2])
    q_pids = np.array([1, 2, 3])
    q_cams = np.array([0, 1, 0])
    distmat = np.array(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            [0.5, 0.0, 0.5, 0.2, 0.5, 0.9],
            [0.3, 0.1, 0.2, 0.4, 0.6, 0.5],
        ]
    )
    return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("fn", [evaluate_rank, evaluate_rank_reference])
def test_hand_computed_example(fn) -> None:
    # q0 (pid 1, cam 0): g0 is junk (pid 1, cam 0) and removed; ranked list g1 g2 g3 g4 g5,
    #   true matches g2 (rank 2) and g5 (rank 5): AP = (1/2 + 2/5) / 2 = 0.45, INP = 2/5.
    # q1 (pid 2, cam 1): g1 is junk.  g0, g2, g4 tie at 0.5 and keep gallery order, so the
    #   list is g3 (distractor, 0.2) g0 g2 g4 g5 and the only match g4 has rank 4:
    #   AP = 1/4, INP = 1/4.
    # q2 (pid 3): no gallery item has pid 3 -> skipped.
    # CMC over the 2 valid queries (first match at ranks 2 and 4): [0, .5, .5, 1, 1, 1, 1, 1]
    # mAP = (0.45 + 0.25) / 2 = 0.35, mINP = (0.4 + 0.25) / 2 = 0.325.
    res = fn(*hand_example(), max_rank=8)  # longer than the gallery: last value repeats
    np.testing.assert_allclose(res.cmc, [0, 0.5, 0.5, 1, 1, 1, 1, 1], atol=1e-7)
    assert res.mAP == pytest.approx(0.35, abs=1e-12)
    assert res.mINP == pytest.approx(0.325, abs=1e-12)
    assert (res.num_valid, res.num_skipped) == (2, 1)
    assert res.cmc.dtype == np.float32
    np.testing.assert_allclose(res.ap, [0.45, 0.25, 0.0], atol=1e-12)
    assert res.first_rank.tolist() == [2, 4, 0]  # 0: skipped


def make_case(seed: int, kind: str) -> tuple[np.ndarray, ...]:
    """Random protocol case: distractors (pid 0), query ids absent from the gallery, few cameras."""
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(5, 50)), int(rng.integers(30, 300))
    num_ids = int(rng.integers(3, 15))
    g_pids = rng.integers(0, num_ids, num_g)  # 0 = distractor
    q_pids = rng.integers(1, num_ids + 3, num_q)  # ids > num_ids - 1 have no gallery match
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    same = q_pids[:, None] == g_pids[None, :]
    if kind == "float":
        d = rng.random((num_q, num_g))
    elif kind == "ties":  # integer-valued distances: many exact ties, also with true matches
        d = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
    elif kind == "clustered":  # true matches mostly closer (the "trained model" regime)
        d = (1 + rng.random((num_q, num_g)) - 0.8 * same * rng.random((num_q, num_g))).astype(
            np.float32
        )
    else:  # float16 with inf entries and ties
        d = rng.integers(0, 6, (num_q, num_g)).astype(np.float16)
        d[rng.random(d.shape) < 0.1] = np.inf
    return d, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("kind", ["float", "ties", "clustered", "inf16"])
@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_reference(kind: str, seed: int) -> None:
    case = make_case(seed, kind)
    assert_same(evaluate_rank(*case, max_rank=20), evaluate_rank_reference(*case, max_rank=20))


def test_cases_cover_skipped_queries_and_distractors() -> None:
    cases = [make_case(seed, "float") for seed in range(4)]
    assert all((c[2] == 0).any() for c in cases)  # distractors in every gallery
    assert sum(evaluate_rank(*c).num_skipped for c in cases) > 0


@pytest.mark.parametrize("share", [-1.0, 2.0])
@pytest.mark.parametrize("kind", ["float", "ties", "clustered", "inf16"])
def test_both_binning_paths_and_chunks(monkeypatch, share: float, kind: str) -> None:
    # share -1: every row uses the batched binary search; 2: every row the per-item search.
    # Tiny chunks: many chunks of a few queries, spread over 3 threads.
    monkeypatch.setattr(rank_mod, "_DENSE_ROW_SHARE", share)
    monkeypatch.setattr(rank_mod, "_CHUNK_ELEMENTS", 500)
    for seed in range(10, 13):
        case = make_case(seed, kind)
        ref = evaluate_rank_reference(*case, max_rank=10)
        assert_same(evaluate_rank(*case, max_rank=10, num_threads=3), ref)


def test_tie_order_is_gallery_index() -> None:
    # All distances equal: the ranked list is the gallery order g1 g2 g3 g4 g5 (g0 is junk:
    # same id and camera), so the match g4 has rank 4, whatever sort algorithm is used.
    d = np.zeros((1, 6))
    g_pids, g_cams = np.array([7, 1, 2, 3, 7, 4]), np.array([0, 0, 0, 0, 1, 0])
    res = evaluate_rank(d, np.array([7]), g_pids, np.array([0]), g_cams, max_rank=6)
    np.testing.assert_allclose(res.cmc, [0, 0, 0, 1, 1, 1])
    assert res.mAP == pytest.approx(0.25) and res.mINP == pytest.approx(0.25)


def test_torch_inputs_and_thread_counts_agree() -> None:
    case = make_case(3, "clustered")
    base = evaluate_rank(*case, num_threads=1)
    as_torch = [torch.from_numpy(np.asarray(x)) for x in case]
    assert_same(evaluate_rank(*as_torch, num_threads=4), base)
    assert base.cmc.shape == (50,)


def test_distractor_is_a_negative() -> None:
    # A distractor (pid 0) closer than the true match pushes the match to rank 2.
    d = np.array([[0.1, 0.5]])
    q_pids, g_pids, q_cams, g_cams = np.array([5]), np.array([0, 5]), np.array([0]), np.array([1, 1])
    res = evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, max_rank=2)
    np.testing.assert_allclose(res.cmc, [0.0, 1.0])
    assert res.mAP == pytest.approx(0.5)


def test_validation_errors() -> None:
    d, qp, gp, qc, gc = hand_example()
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank(d, qp, gp[:-1], qc, gc)
    with pytest.raises(ValueError, match="q_camids"):
        evaluate_rank(d, qp, gp, qc[:2], gc)
    with pytest.raises(ValueError, match="2-D"):
        evaluate_rank(d[0], qp, gp, qc, gc)
    bad = d.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(bad, qp, gp, qc, gc)
    with pytest.raises(ValueError, match="integers"):
        evaluate_rank(d, qp.astype(float), gp, qc, gc)
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(d, qp, gp, qc, gc, max_rank=0)
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(d, np.array([9, 9, 9]), gp, qc, gc)
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank_reference(d, np.array([9, 9, 9]), gp, qc, gc)


@pytest.mark.parametrize("kind", ["float", "clustered"])
def test_per_query_results_average_to_rank1_and_map(kind: str) -> None:
    case = make_case(3, kind)
    res = evaluate_rank(*case, max_rank=5)
    valid = res.first_rank > 0
    assert valid.sum() == res.num_valid and (res.ap[~valid] == 0).all()
    assert np.mean(res.first_rank[valid] == 1) == pytest.approx(float(res.cmc[0]), abs=1e-6)
    assert np.mean(res.ap[valid]) == pytest.approx(res.mAP, abs=1e-12)


def test_the_default_thread_count_is_the_cores_this_process_may_use(monkeypatch) -> None:
    """No ``num_threads``: as many pool threads as ``config.schema.available_cores`` (affinity-aware) allows."""
    pools = []
    real_pool = rank_mod.ThreadPoolExecutor

    def recording_pool(max_workers):
        pools.append(max_workers)
        return real_pool(max_workers=max_workers)

    monkeypatch.setattr(rank_mod, "ThreadPoolExecutor", recording_pool)
    monkeypatch.setattr(rank_mod, "_CHUNK_ELEMENTS", 500)  # several chunks of queries
    monkeypatch.setattr(rank_mod, "available_cores", lambda: 3)
    case = make_case(3, "clustered")
    assert_same(evaluate_rank(*case), evaluate_rank(*case, num_threads=1))
    assert pools == [3, 1]
