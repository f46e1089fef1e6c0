"""The study's two sources of noise in a paired difference (variant minus reference), in percentage points.

* Training: the seed-level paired t interval (:func:`sangal.metrics.paired.paired_difference`), its paired
  sd, and the seeds an interval of ±1, ±2 and ±3 points would need at that sd. It is conditional on the
  test set: more seeds shrink it, they do not change which test identities were drawn.
* Test sampling: for each seed, a paired bootstrap over query identities of the same difference
  (:func:`sampling_noise`, :func:`sangal.metrics.paired.bootstrap_paired`; the per-query AP and Rank-1
  hits every run stores in its result.json), and one over the mean of all seeds (every seed sees the same
  resample, as they share the test set). Its sd is what another draw of as many test identities would move the difference by.
"""

from __future__ import annotations

import math

import numpy as np

from sangal.errors import SangalError
from sangal.metrics.paired import bootstrap_paired, paired_difference, seeds_needed

HALF_WIDTHS = (1, 2, 3)
#: study metric -> the per-query array (result.json ``per_query``) it is the mean of
PER_QUERY = {"rank1": "rank1", "mAP": "ap"}
RESAMPLES = 1000
BOOTSTRAP_SEED = 0


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def seed_level(ref: list[float], var: list[float]) -> dict:
    """The paired entry of one metric: mean difference, 95 % t interval, paired sd, n, seeds needed."""
    d = paired_difference(ref, var)
    return {"diff": d.diff, "ci95": [_num(d.lo), _num(d.hi)], "sd": _num(d.sd), "n": d.n,
            "seeds_needed": {str(h): seeds_needed(d.sd, h) for h in HALF_WIDTHS}}


def sampling_noise(pairs: list[tuple[dict, dict]], metric: str, resamples: int = RESAMPLES) -> dict | None:
    """Bootstrap over query identities of ``metric``'s difference, per seed and over the seeds' mean.

    ``pairs``: (reference run, variant run) result dicts of the same seed. None where no pair carries
    per-query results (runs recorded before they were stored); pairs without them are left out.
    """
    key = PER_QUERY[metric]
    scale = 100.0 if key == "rank1" else 1.0  # hits are 0/1; AP is stored in percent
    usable = [(a, b) for a, b in pairs if "per_query" in a and "per_query" in b]
    if not usable:
        return None
    pids = usable[0][0]["per_query"]["pid"]
    per_seed, ref_rows, var_rows = [], [], []
    for a, b in usable:
        qa, qb = a["per_query"], b["per_query"]
        if qa["pid"] != pids or qb["pid"] != pids:
            raise SangalError(f"seed {a['seed']}: the runs' result.json files list different queries; a paired "
                              "bootstrap needs one test set (was the data changed under a resumed study?)")
        ref_rows.append(np.asarray(qa[key], np.float64) * scale)
        var_rows.append(np.asarray(qb[key], np.float64) * scale)
        boot = bootstrap_paired(ref_rows[-1], var_rows[-1], pids, resamples, BOOTSTRAP_SEED)
        per_seed.append({"seed": a["seed"], "diff": boot.diff, "ci95": [boot.lo, boot.hi], "sd": boot.sd})
    boot = bootstrap_paired(np.stack(ref_rows), np.stack(var_rows), pids, resamples, BOOTSTRAP_SEED)
    return {"per_seed": per_seed, "all_seeds": {"diff": boot.diff, "ci95": [boot.lo, boot.hi], "sd": boot.sd,
                                                "n": len(usable)},
            "resamples": resamples, "query_identities": len(set(pids)), "queries": len(pids)}


def paired_entries(pairs: list[tuple[dict, dict]], metrics: tuple[str, ...]) -> dict:
    """``paired.<variant>`` of study.json: seed level for every metric, plus test sampling where it applies."""
    out = {}
    for k in metrics:
        out[k] = seed_level([a[k] for a, _ in pairs], [b[k] for _, b in pairs])
        if k in PER_QUERY:
            sampled = sampling_noise(pairs, k)
            if sampled is not None:
                out[k]["test_sampling"] = sampled
    return out


def compact_per_query(per_query: dict) -> dict:
    """What a run's result.json keeps of ``evaluate_features``' per-query lists: the valid queries' pids,
    AP in percent (3 decimals) and Rank-1 hits (0/1), in query order."""
    valid = [i for i, r in enumerate(per_query["first_rank"]) if r > 0]
    return {"pid": [int(per_query["pid"][i]) for i in valid],
            "ap": [round(100.0 * per_query["ap"][i], 3) for i in valid],
            "rank1": [int(per_query["first_rank"][i] == 1) for i in valid]}
