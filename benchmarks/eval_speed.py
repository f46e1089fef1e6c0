"""Speed of the evaluation metrics on a Market-1501-sized synthetic problem.

Times ``evaluate_rank`` against ``evaluate_rank_reference`` in the same run on the
same matrix (3,368 queries x 15,913 gallery items, 751 ids, 6 cameras, 2,793
distractors with pid 0, like Market-1501's query/gallery after junk removal),
prints both times, their ratio and the largest difference between the results.
Then times k-reciprocal re-ranking in a child process (default 1,000 x 5,000;
``--full-rerank`` for the full size) and prints its peak RSS next to the size of
one dense (Q+G)^2 float64 matrix, which the reference code holds several of.

Features are id centroids + a per-camera offset + noise, so true matches are
closer than most negatives and the scores look like a trained model's
(``--noise`` makes the task harder; ``--worst-case`` adds random features, i.e.
an untrained model, where every negative must be binned).

The machine may be shared: the load average is printed before and after, and
CPU times are printed next to wall times.

    python benchmarks/eval_speed.py                  # ranking at Market size + re-ranking 1000x5000
    python benchmarks/eval_speed.py --full-rerank    # re-ranking at Market size too (minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from sangal.metrics import compute_distance, evaluate_rank, evaluate_rank_reference, re_ranking


def make_split(
    rng: np.random.Generator,
    num_q: int,
    num_g: int,
    num_ids: int,
    num_cams: int,
    num_distractors: int,
    dim: int,
    noise: float,
) -> dict[str, np.ndarray]:
    """Market-like query/gallery features, pids (0 = distractor) and camera ids."""
    per_id = np.full(num_ids, (num_g - num_distractors) // num_ids)
    per_id[rng.choice(num_ids, (num_g - num_distractors) % num_ids, replace=False)] += 1
    g_pids = np.concatenate([np.repeat(np.arange(1, num_ids + 1), per_id), np.zeros(num_distractors, int)])
    q_pids = rng.permutation(np.resize(np.arange(1, num_ids + 1), num_q))
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    centroids = rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
    cam_offset = 0.5 * rng.standard_normal((num_cams, dim), dtype=np.float32)

    def feats(pids: np.ndarray, cams: np.ndarray) -> np.ndarray:
        f = centroids[pids] + cam_offset[cams]
        distractor = pids == 0  # each distractor is its own random person
        f[distractor] = rng.standard_normal((int(distractor.sum()), dim), dtype=np.float32)
        f[distractor] += cam_offset[cams[distractor]]
        f += noise * rng.standard_normal(f.shape, dtype=np.float32)
        return f

    return dict(qf=feats(q_pids, q_cams), gf=feats(g_pids, g_cams), q_pids=q_pids,
                g_pids=g_pids, q_cams=q_cams, g_cams=g_cams)


def timed(fn, *args, **kwargs):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w, time.process_time() - c


def load() -> str:
    return "load average %.2f %.2f %.2f on %d CPUs" % (*os.getloadavg(), os.cpu_count() or 0)


def bench_rank(split: dict[str, np.ndarray], label: str, threads: int | None) -> None:
    dist, w, c = timed(compute_distance, split["qf"], split["gf"], "cosine")
    print(f"[{label}] compute_distance (cosine) {dist.shape}: {w:.2f} s wall, {c:.2f} s CPU")
    args = (dist, split["q_pids"], split["g_pids"], split["q_cams"], split["g_cams"])
    fast, wf, cf = timed(evaluate_rank, *args, num_threads=threads)
    ref, wr, cr = timed(evaluate_rank_reference, *args)
    diff = max(float(np.abs(fast.cmc - ref.cmc).max()), abs(fast.mAP - ref.mAP), abs(fast.mINP - ref.mINP))
    same_counts = (fast.num_valid, fast.num_skipped) == (ref.num_valid, ref.num_skipped)
    print(f"[{label}] rank-1 {fast.cmc[0]:.4f}  rank-5 {fast.cmc[4]:.4f}  mAP {fast.mAP:.4f}  "
          f"mINP {fast.mINP:.4f}  valid {fast.num_valid}  skipped {fast.num_skipped}")
    print(f"[{label}] evaluate_rank           {wf:7.3f} s wall  {cf:7.3f} s CPU")
    print(f"[{label}] evaluate_rank_reference {wr:7.3f} s wall  {cr:7.3f} s CPU")
    print(f"[{label}] speed-up {wr / wf:.1f}x wall, {cr / cf:.1f}x CPU; "
          f"max |fast - reference| = {diff:.2e}; counts equal: {same_counts}")


def memory_kb() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB, from /proc (ru_maxrss as fallback)."""
    try:
        with open("/proc/self/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if line.startswith("Vm"))
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak, peak


def rerank_child(a: argparse.Namespace) -> None:
    """Run in a fresh process so that the peak RSS is the re-ranking's own."""
    rng = np.random.default_rng(a.seed + 1)
    s = make_split(rng, a.rq, a.rg, a.ids, a.cameras, int(a.rg * a.distractors / a.gallery),
                   a.dim, a.noise)
    plain = compute_distance(s["qf"], s["gf"], "cosine")
    base, _ = memory_kb()
    try:  # reset the peak to the current RSS (Linux >= 4.0), so the peak is re-ranking's
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    rr, w, c = timed(re_ranking, s["qf"], s["gf"], metric="cosine")
    _, peak = memory_kb()
    ids = (s["q_pids"], s["g_pids"], s["q_cams"], s["g_cams"])
    print(json.dumps(dict(wall=w, cpu=c, base_kb=base, peak_kb=peak,
                          map_plain=evaluate_rank(plain, *ids).mAP, map_rr=evaluate_rank(rr, *ids).mAP)))


def bench_rerank(a: argparse.Namespace) -> None:
    cmd = [sys.executable, __file__, "--rerank-child", "--rq", str(a.rq), "--rg", str(a.rg)]
    for key in ("ids", "cameras", "distractors", "gallery", "dim", "noise", "seed"):
        cmd += [f"--{key}", str(getattr(a, key))]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    n = a.rq + a.rg
    print(f"[rerank] re_ranking {a.rq} x {a.rg} (dim {a.dim}, cosine, k1=20 k2=6 lambda=0.3): "
          f"{r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU")
    print(f"[rerank] peak RSS {r['peak_kb'] / 1024:.0f} MiB, of which {r['base_kb'] / 1024:.0f} MiB "
          f"before re-ranking (torch, features, plain distances); one dense (Q+G)^2 float64 matrix = "
          f"{n * n * 8 / 2**20:.0f} MiB (the reference code holds several: distances, ranks, V, "
          f"V_qe), output Q x G float32 = {a.rq * a.rg * 4 / 2**20:.0f} MiB")
    print(f"[rerank] mAP plain cosine {r['map_plain']:.4f} -> re-ranked {r['map_rr']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=3368, help="Market-1501: 3368")
    p.add_argument("--gallery", type=int, default=15913, help="Market-1501 without junk: 15913")
    p.add_argument("--ids", type=int, default=751, help="test identities (Market-1501: 751)")
    p.add_argument("--cameras", type=int, default=6)
    p.add_argument("--distractors", type=int, default=2793, help="gallery items with pid 0")
    p.add_argument("--dim", type=int, default=2048, help="feature size (ResNet-50: 2048)")
    p.add_argument("--noise", type=float, default=3.0,
                   help="feature noise; 3 gives rank-1 0.98, mAP 0.73, mINP 0.18 at Market size")
    p.add_argument("--threads", type=int, default=None, help="evaluate_rank threads (default: all CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worst-case", action="store_true", help="also time random features (untrained model)")
    p.add_argument("--rerank-queries", dest="rq", type=int, default=1000)
    p.add_argument("--rerank-gallery", dest="rg", type=int, default=5000)
    p.add_argument("--full-rerank", action="store_true", help="re-rank at --queries x --gallery")
    p.add_argument("--skip-rerank", action="store_true")
    p.add_argument("--rq", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rg", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rerank-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rerank_child:
        return rerank_child(a)
    if a.full_rerank:
        a.rq, a.rg = a.queries, a.gallery

    print(load())
    rng = np.random.default_rng(a.seed)
    args = (a.queries, a.gallery, a.ids, a.cameras, a.distractors, a.dim)
    bench_rank(make_split(rng, *args, a.noise), "trained-like", a.threads)
    if a.worst_case:
        bench_rank(make_split(rng, *args, 1000.0), "random features", a.threads)
    if not a.skip_rerank:
        bench_rerank(a)
    print(load())


if __name__ == "__main__":
    main()
