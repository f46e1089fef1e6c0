"""Rank metrics for person re-identification: CMC, mAP and mINP.

Protocol (Market-1501 / DukeMTMC-reID, as in torchreid ``metrics/rank.py``):

* For each query, gallery items with the same pid AND the same camera are
  removed ("junk": the same person seen by the same camera is too easy).
  Junk pid -1 images are already dropped by the dataset readers; distractors
  (pid 0) stay in the gallery and count as negatives like any other id.
* A query whose remaining gallery holds no true match is skipped and counted
  in ``num_skipped``; every average below is over the valid queries only.
* The ranked list is the STABLE ascending sort of the query's distances: two
  gallery items at exactly the same distance keep their gallery order (the
  smaller gallery index ranks first).  Both implementations follow it exactly,
  so results do not depend on the sorting algorithm.
* CMC@r: fraction of valid queries whose first true match has rank <= r.
  ``cmc`` always has ``max_rank`` entries; ranks past the gallery size repeat
  the last value (1.0: every valid query has found its match by then).
* AP: mean over the true matches of the precision at their rank,
  ``AP = mean_k k / r_k`` with ``r_k`` the (1-based) rank of the k-th match.
* INP (Ye et al., "Deep Learning for Person Re-identification: A Survey and
  Outlook", TPAMI 2021): ``num_matches / rank of the hardest true match``;
  mINP is its mean over the valid queries (torchreid / fast-reid definition).

``evaluate_rank`` never sorts a row.  The rank of the k-th true match is
``k + (#negatives ranked before it)``, where "before" is (distance, gallery
index) order.  Junk items all carry the query's id, so every other-id item is
a valid negative: per query we sort only its few true matches (found through
the pid-sorted gallery), give every item a bin = number of matches ranked
before it, subtract the bins of the same-id items, and read all match ranks
from the cumulative histogram of the bins.  Only items no farther than the
hardest match can precede a match; with a decent model they are a few percent
of the gallery and are binned one by one, else the whole row goes through a
batched branch-free binary search; exact ties are then counted by gallery index.
Chunks of queries run in a thread pool (torch releases the GIL).
``evaluate_rank_reference`` is the plain per-query stable-argsort version used
to check it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sangal.config.schema import available_cores  # the one core counter (affinity-aware)

__all__ = ["RankResult", "evaluate_rank", "evaluate_rank_reference"]

# Elements (queries x gallery) handled by one task of the thread pool.
_CHUNK_ELEMENTS = 1 << 21
# Rows where more than this share of the gallery precedes the hardest match bin the whole
# row with the batched search (several times cheaper per item than the per-item search).
_DENSE_ROW_SHARE = 0.3


class NoTrueMatch(ValueError):
    """No query has a true match left in the gallery: there is nothing to average (a caller refuses, naming why)."""


@dataclass
class RankResult:
    """CMC (``cmc[r-1]`` = rank-r accuracy), mAP, mINP, query counts; per query: ``ap``, ``first_rank`` (0: skipped)."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_skipped: int
    ap: np.ndarray | None = None  # (Q,) in query order, 0 where skipped: what a bootstrap over queries resamples
    first_rank: np.ndarray | None = None  # (Q,) 1-based rank of the first true match


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _validate(
    distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, max_rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes/values and return (distmat, q_pids, g_pids, q_camids, g_camids) as arrays."""
    d = _as_numpy(distmat)
    if d.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {d.shape}")
    if d.dtype.kind not in "fiub":
        raise ValueError(f"distmat must be numeric, got dtype {d.dtype}")
    if d.dtype.kind != "f":
        d = d.astype(np.float64)  # exact for integer distances below 2**53
    elif d.dtype.itemsize < 4:
        d = d.astype(np.float32)  # exact widening of float16
    num_q, num_g = d.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat is empty (shape {d.shape})")
    if np.isnan(d).any():
        raise ValueError("distmat contains NaN; check the features for NaN or inf values")
    ids = []
    for name, arr, n in (("q_pids", q_pids, num_q), ("g_pids", g_pids, num_g), ("q_camids", q_camids, num_q),
                         ("g_camids", g_camids, num_g)):
        a = _as_numpy(arr)
        if a.ndim != 1 or a.shape[0] != n:
            side = "rows (queries)" if name.startswith("q") else "columns (gallery items)"
            raise ValueError(f"{name} must be 1-D with {n} entries (distmat's {side}), got shape {a.shape}")
        if a.dtype.kind not in "iub":
            raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
        ids.append(a.astype(np.int64, copy=False))
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return (d, *ids)


def _summarise(
    first_rank: np.ndarray, ap: np.ndarray, inp: np.ndarray, valid: np.ndarray, max_rank: int
) -> RankResult:
    """Average per-query results over the valid queries (same code for both paths)."""
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise NoTrueMatch("no query has a true match in the gallery outside its own camera; "
                          "check q_pids/g_pids and q_camids/g_camids")
    # first_rank is 1-based; CMC@r = share of valid queries with first_rank <= r.
    hist = np.bincount(np.minimum(first_rank[valid], max_rank + 1) - 1, minlength=max_rank + 1)
    cmc = np.cumsum(hist[:max_rank]) / num_valid
    return RankResult(
        cmc=cmc.astype(np.float32),
        mAP=float(np.mean(ap[valid])),
        mINP=float(np.mean(inp[valid])),
        num_valid=num_valid,
        num_skipped=int(valid.size - num_valid), ap=np.where(valid, ap, 0.0), first_rank=np.where(valid, first_rank, 0),
    )


# ---------------------------------------------------------------------------------------------
# Reference implementation: one stable argsort per query.
# ---------------------------------------------------------------------------------------------


def evaluate_rank_reference(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    num_threads: int | None = None,
) -> RankResult:
    """Straightforward per-query sort (torchreid ``eval_market1501`` with a stable sort).

    Kept as the ground truth for tests and the baseline for ``benchmarks/eval_speed.py``.
    ``num_threads`` is accepted for signature compatibility and ignored.
    """
    d, q_pids, g_pids, q_camids, g_camids = _validate(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    num_q = d.shape[0]
    first_rank = np.zeros(num_q, dtype=np.int64)
    ap = np.zeros(num_q, dtype=np.float64)
    inp = np.zeros(num_q, dtype=np.float64)
    valid = np.zeros(num_q, dtype=bool)
    for q in range(num_q):
        order = np.argsort(d[q], kind="stable")
        # remove gallery items with the same pid and camera as the query
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw_cmc = (g_pids[order][keep] == q_pids[q]).astype(np.int64)
        if not raw_cmc.any():
            continue  # no valid true match: skipped
        valid[q] = True
        match_ranks = np.flatnonzero(raw_cmc) + 1  # 1-based ranks of the true matches
        first_rank[q] = match_ranks[0]
        hits = np.arange(1, match_ranks.size + 1)
        ap[q] = np.mean(hits / match_ranks)
        inp[q] = match_ranks.size / match_ranks[-1]
    return _summarise(first_rank, ap, inp, valid, int(max_rank))


# ---------------------------------------------------------------------------------------------
# Fast implementation: per-chunk binning of the negatives between the sorted true matches.
# ---------------------------------------------------------------------------------------------


def _same_id_items(
    d: torch.Tensor,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_order: torch.Tensor,
    g_sorted_pids: torch.Tensor,
    g_camids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gallery items sharing each query's id, found through the pid-sorted gallery.

    Returns ``index`` (B, L) gallery indices (ascending, padded with G), ``dist`` (B, L)
    their distances (+inf on padding), ``present`` (B, L) not padding and ``pos`` (B, L)
    true matches (other camera); present & ~pos are the junk items of the query.
    """
    g = d.shape[1]
    lo = torch.searchsorted(g_sorted_pids, q_pids, side="left")
    n = torch.searchsorted(g_sorted_pids, q_pids, side="right") - lo
    slot = torch.arange(max(int(n.max()), 1))
    present = slot[None, :] < n[:, None]
    index = g_order[(lo[:, None] + slot[None, :]).clamp(max=g - 1)]
    index = torch.where(present, index, g)
    safe = index.clamp(max=g - 1)
    dist = torch.where(present, torch.gather(d, 1, safe), math.inf)
    pos = present & (g_camids[safe] != q_camids[:, None])
    return index, dist, present, pos


def _sorted_matches(
    index: torch.Tensor, dist: torch.Tensor, pos: torch.Tensor, g: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's true matches in ranked order: (value, index) sorted lexicographically.

    Returns ``values`` (B, M), ``match_index`` (B, M), padded with (+inf, G), and ``count`` (B,).
    """
    values = torch.where(pos, dist, math.inf)
    match_index = torch.where(pos, index, g)
    # sort by index, then stably by value: equal distances stay in gallery order
    match_index, perm = torch.sort(match_index, dim=1, stable=True)
    values, perm2 = torch.sort(values.gather(1, perm), dim=1, stable=True)
    match_index = match_index.gather(1, perm2)
    count = pos.sum(dim=1)
    m = max(int(count.max()), 1)
    return values[:, :m].contiguous(), match_index[:, :m].contiguous(), count


def _bins_sparse(
    values: torch.Tensor, index: torch.Tensor, r: torch.Tensor, dv: torch.Tensor, dc: torch.Tensor
) -> torch.Tensor:
    """bin of item (row r, distance dv, gallery index dc) = #matches ranked before it.

    Match k is before the item iff v_k < dv, or v_k == dv and j_k < dc.  One binary search per
    item in its row's matches (gathered, so the cost is N x M); ties are fixed directly.
    """
    m = values.shape[1]
    out = torch.empty(r.numel(), dtype=torch.int64)
    step = max(1, _CHUNK_ELEMENTS // m)
    for s in range(0, r.numel(), step):
        rs, dd, c = r[s : s + step], dv[s : s + step, None], dc[s : s + step]
        pv = values[rs]
        bins = torch.searchsorted(pv, dd)  # matches strictly closer, (n, 1)
        # a tie starts at ``bins`` if anywhere
        t = (pv.gather(1, bins.clamp(max=m - 1)) == dd).squeeze(1).nonzero(as_tuple=True)[0]
        bins = bins.squeeze(1)
        if t.numel():
            eq = pv[t] == dd[t]
            bins[t] += (eq & (index[rs[t]] < c[t, None])).sum(dim=1)
        out[s : s + step] = bins
    return out


def _lower_bound(values: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``torch.searchsorted(values, d)`` as a branch-free binary search.

    Each step gathers one boundary per item; on unpredictable data (a poor model) this is
    about 2x faster than ``torch.searchsorted``, whose branches mispredict.
    """
    b, m = values.shape
    width = 1 << m.bit_length()  # power of two > m: padding (+inf) keeps the result <= m
    padded = torch.full((b, width), math.inf, dtype=values.dtype)
    padded[:, :m] = values
    idx = torch.zeros(d.shape, dtype=torch.int64)
    step = width // 2
    while step:
        # probe boundary idx + step - 1 (< width), read through a shifted view
        idx.add_(torch.gather(padded[:, step - 1 :], 1, idx) < d, alpha=step)
        step //= 2
    return idx


def _hist_dense(d: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, M+1) histogram of the bins of ALL gallery items (batched binary search)."""
    b, g = d.shape
    m = values.shape[1]
    bins = _lower_bound(values, d)  # matches strictly closer
    # An item at exactly the distance of a match also follows the tied matches with a smaller
    # gallery index.  A NaN column at M means no tie is seen past the last match.
    nan = torch.full((b, 1), math.nan, dtype=values.dtype)
    tie = torch.gather(torch.cat([values, nan], dim=1), 1, bins) == d
    if bool(tie.any()):
        tr, tc = tie.nonzero(as_tuple=True)
        tl = bins[tr, tc]
        # Matches are sorted by (value, index), so the tied ones sit in a run starting at
        # ``bins`` with ascending indices.  A key over (row, start of the run, gallery index) is
        # sorted globally, and one 1-D searchsorted counts, for every tie, the matches of
        # earlier rows + those before the run + the tied ones with a smaller gallery index.
        k = torch.arange(m).expand(b, m)
        new_run = torch.ones((b, m), dtype=torch.bool)
        new_run[:, 1:] = values[:, 1:] != values[:, :-1]
        run_start = torch.cummax(torch.where(new_run, k, 0), dim=1).values
        stride = g + 1  # gallery indices and the padding G are < stride
        match_key = ((torch.arange(b)[:, None] * (m + 1) + run_start) * stride + index).reshape(-1)
        tie_key = (tr * (m + 1) + tl) * stride + tc
        bins[tr, tc] = torch.searchsorted(match_key, tie_key) - tr * m
    ones = torch.ones(1, dtype=torch.int64).expand(b, g)
    return torch.zeros((b, m + 1), dtype=torch.int64).scatter_add_(1, bins, ones)


def _hist(r: torch.Tensor, bins: torch.Tensor, b: int, m: int) -> torch.Tensor:
    return torch.bincount(r * (m + 1) + bins, minlength=b * (m + 1)).reshape(b, m + 1)


def _chunk_ranks(
    d: torch.Tensor,
    q_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_order: torch.Tensor,
    g_sorted_pids: torch.Tensor,
    g_camids: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First-match rank, AP, INP and validity for one chunk of queries (B rows of distmat)."""
    b, g = d.shape
    s_index, s_dist, present, pos = _same_id_items(
        d, q_pids, q_camids, g_order, g_sorted_pids, g_camids
    )
    values, index, count = _sorted_matches(s_index, s_dist, pos, g)
    m = values.shape[1]

    # rank of match k = k + 1 + #negatives before it = k + 1 + (#items before it) - (#same-id
    # items before it).  Junk items all share the query's id, so every other-id item
    # (distractors included) is a valid negative; the few same-id items are binned directly.
    sr, sc = present.nonzero(as_tuple=True)
    hist_same = _hist(sr, _bins_sparse(values, index, sr, s_dist[sr, sc], s_index[sr, sc]), b, m)

    # Only items up to the hardest match can precede a match.  With a decent model they are
    # few: search them one by one.  Rows with many (a poor model) search every item, batched.
    hardest = values.gather(1, (count - 1).clamp(min=0)[:, None])
    hardest = torch.where(count[:, None] > 0, hardest, -math.inf)  # skipped rows: no work
    cand = d <= hardest
    hist_all = torch.zeros((b, m + 1), dtype=torch.int64)
    # the share of candidates per row, estimated on every 8th column, only picks the method
    dense = (torch.count_nonzero(cand[:, ::8], dim=1) * 8 > _DENSE_ROW_SHARE * g).nonzero()[:, 0]
    if dense.numel():
        hist_all[dense] = _hist_dense(d[dense], values[dense], index[dense])
        cand[dense] = False
    r, c = cand.nonzero(as_tuple=True)
    hist_all += _hist(r, _bins_sparse(values, index, r, d[r, c], c), b, m)
    neg_before = torch.cumsum(hist_all[:, :m] - hist_same[:, :m], dim=1)

    k1 = torch.arange(1, m + 1, dtype=torch.float64)
    ranks = neg_before.to(torch.float64) + k1  # 1-based rank of the k-th true match
    in_row = k1[None, :] <= count[:, None]
    ap = torch.where(in_row, k1 / ranks, 0.0).sum(1) / count.clamp(min=1)
    last = ranks.gather(1, (count - 1).clamp(min=0)[:, None])[:, 0]
    inp = count.to(torch.float64) / last
    first = ranks[:, 0].to(torch.int64)
    return first.numpy(), ap.numpy(), inp.numpy(), (count > 0).numpy()


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    num_threads: int | None = None,
) -> RankResult:
    """CMC, mAP and mINP of a (num_query, num_gallery) distance matrix (protocol: module doc).

    Args:
        distmat: (Q, G) distances, numpy or torch; smaller = more similar. NaN is rejected.
        q_pids, g_pids: identity labels (ints) of the queries / gallery items.
        q_camids, g_camids: camera indices of the queries / gallery items.
        max_rank: length of the returned CMC curve.
        num_threads: worker threads over chunks of queries (default: the cores this process may use).

    Returns the same numbers as ``evaluate_rank_reference`` (up to float rounding) without
    sorting any row.
    """
    d, q_pids, g_pids, q_camids, g_camids = _validate(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    num_q, num_g = d.shape
    td = torch.from_numpy(np.ascontiguousarray(d))
    # -0.0 and 0.0 compare equal everywhere, so no normalisation is needed before searching.
    tq_pids, tq_cams = torch.from_numpy(q_pids), torch.from_numpy(q_camids)
    tg_cams = torch.from_numpy(g_camids)
    g_order = torch.from_numpy(np.argsort(g_pids, kind="stable"))
    g_sorted_pids = torch.from_numpy(g_pids)[g_order].contiguous()

    rows = max(1, _CHUNK_ELEMENTS // num_g)
    chunks = [(s, min(s + rows, num_q)) for s in range(0, num_q, rows)]

    def run(bounds: tuple[int, int]) -> tuple[np.ndarray, ...]:
        s, e = bounds
        return _chunk_ranks(td[s:e], tq_pids[s:e], tq_cams[s:e], g_order, g_sorted_pids, tg_cams)

    # Chunks always run in pool threads, even with one worker: on a busy machine the same
    # torch calls made from the main thread (its intra-op OpenMP team) measured 5-20x slower.
    workers = max(1, min(len(chunks), num_threads or available_cores()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(run, chunks))
    first, ap, inp, valid = (np.concatenate(p) for p in zip(*parts))
    return _summarise(first, ap, inp, valid, int(max_rank))
