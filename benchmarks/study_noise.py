"""Training noise of candidate study settings: the paired sd of san-gal - id and the seeds a ±3 interval needs.

For each candidate, a small `sangal study` of `id` and `san-gal` over N paired seeds on the demo's data
(one attribute net, heat-map caches and map predictor per data plan, shared by every candidate on it).
The criterion is the paired sd (lower: fewer seeds for the same interval), never which variant wins:
the mean difference is printed apart, marked as not the criterion.

A candidate is ``NAME: [section.key=value ...] [plan.field=value ...]``: config overrides of both rows,
and changes of the demo plan (sizes, budget; a changed data plan gets its own data and attribute net):

    .venv/bin/python benchmarks/study_noise.py --plan standard --seeds 10 --out runs/study_noise \\
        --candidate 'baseline:' \\
        --candidate 'ema 0.9: train.ema=0.9' \\
        --candidate 'half lr, twice the steps: optim.lr=5e-4 optim.warmup_start_lr=5e-5 optim.warmup_epochs=2 \\
                     optim.milestones=[8] optim.milestone_lrs=[5e-5] plan.epochs=10' \\
        --candidate 'more test ids: plan.ids=500'

The demo's schedule is in epochs (warm-up, milestones), so more steps means more epochs with the schedule
stretched to match (``plan.steps_per_epoch`` cannot grow past one pass over the training identities).
``plan.ids`` grows both halves of the synthetic set, train and test; the number of steps stays the plan's.
``--data STYLE`` picks the synthetic generator's style where it has styles (``generate_synthetic(style=)``).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import shlex
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from sangal.experiments.demo import PLANS, DemoPlan, demo_config, demo_data
from sangal.experiments.study import PRESETS, ensure_attribute_net, run_study, slug
from sangal.synthetic.generate import generate_synthetic

ROWS = tuple(v for v in PRESETS["table1"] if v.name in ("id", "san-gal"))


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: tuple[str, ...]  # config overrides of both rows
    plan: dict  # DemoPlan fields to change


def parse_candidate(text: str) -> Candidate:
    """``"NAME: key=value ... plan.field=value ..."`` -> Candidate (ValueError naming a bad token)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"candidate {text!r} must look like 'NAME: section.key=value ... plan.field=value'")
    overrides, plan = [], {}
    known = {f.name: f.type for f in fields(DemoPlan)}
    for token in shlex.split(rest):
        key, eq, value = token.partition("=")
        if not eq:
            raise ValueError(f"candidate {name.strip()!r}: {token!r} is not key=value")
        if key.startswith("plan."):
            if key[5:] not in known:
                raise ValueError(f"candidate {name.strip()!r}: DemoPlan has no field {key[5:]!r}")
            plan[key[5:]] = int(value)
        else:
            overrides.append(token)
    return Candidate(name.strip(), tuple(overrides), plan)


def shared_setup(out: Path, plan: DemoPlan, style: str | None) -> tuple[Path, list[str]]:
    """Data and attribute net of one data plan (made once): the data root and the overrides that point a
    study at them, at the shared heat-map caches and (after the first study) the shared map predictor."""
    data_key = json.dumps({k: getattr(plan, k) for k in ("ids", "cams", "images_per_cam", "height", "width",
                                                          "attr_extra_ids", "attr_epochs")} | {"style": style})
    shared = out / "shared" / hashlib.sha256(data_key.encode()).hexdigest()[:12]
    if style and "style" not in inspect.signature(generate_synthetic).parameters:
        raise SystemExit("error: this generator has no styles (generate_synthetic lacks a 'style' option)")
    data_root, extra = demo_data(shared, plan, **({"style": style} if style else {}))
    if not (shared / "attr" / "checkpoints" / "final").exists():
        ensure_attribute_net(demo_config(shared, plan, data_root, extra))  # once per data plan
    return data_root, [*extra, f"train.attr_checkpoint={shared / 'attr' / 'checkpoints' / 'final'}",
                       f"train.aah_cache={shared / 'aah'}"]


def run_candidate(out: Path, base: DemoPlan, cand: Candidate, seeds: int, style: str | None) -> dict:
    """One candidate's study of id and san-gal; its paired entries and its wall time (shared set-up excluded)."""
    plan = replace(base, **cand.plan)
    data_root, shared = shared_setup(out, plan, style)
    folder = out / slug(cand.name)
    cfg = demo_config(folder, plan, data_root, [*shared, *cand.overrides])
    t = time.time()
    doc = run_study(cfg, ROWS, list(range(seeds)), localisation_images=0, leak_seeds=1)
    wall = time.time() - t
    runs = [doc["timings"][f"{v.name} seed {s}"] for v in ROWS for s in range(seeds)]
    p = doc["paired"]["san-gal"]
    return {"name": cand.name, "wall_s": wall, "runs_s": sum(runs), "run_s": sum(runs) / len(runs),
            "rank1": p["rank1"], "mAP": p["mAP"], "study": str(folder)}


def print_table(rows: list[dict], seeds: int) -> None:
    print(f"\npaired san-gal - id over {seeds} seeds: the criterion is the paired sd (percentage points) and the "
          "seeds a ±3 point 95 % interval needs")
    print(f"{'candidate':<40}{'sd R-1':>8}{'seeds ±3':>10}{'sd mAP':>8}{'seeds ±3':>10}{'runs':>9}{'per run':>9}"
          f"{'study':>9}")
    for r in rows:
        cells = [text for k in ("rank1", "mAP") for text in (
            "–" if r[k]["sd"] is None else f"{r[k]['sd']:.2f}", str(r[k]["seeds_needed"]["3"] or "–"))]
        print(f"{r['name']:<40}{cells[0]:>8}{cells[1]:>10}{cells[2]:>8}{cells[3]:>10}"
              f"{r['runs_s'] / 60:>8.1f}m{r['run_s']:>8.0f}s{r['wall_s'] / 60:>8.1f}m")
    print("(runs: the Re-ID runs' wall time; study: the whole `sangal study`, with the step-0 and leak checks, and "
          "for the first candidate on a data plan the shared heat maps and map predictor)")
    print("\nNOT the criterion -- the mean difference san-gal - id [seed-level 95 % CI], for the record:")
    for r in rows:
        cells = [f"{r[k]['diff']:+.1f} [{r[k]['ci95'][0]:+.1f}, {r[k]['ci95'][1]:+.1f}]"
                 if r[k]["ci95"][0] is not None else f"{r[k]['diff']:+.1f}" for k in ("rank1", "mAP")]
        print(f"  {r['name']:<38} Rank-1 {cells[0]:<22} mAP {cells[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="standard", help="the demo plan candidates change")
    parser.add_argument("--seeds", type=int, default=10, help="paired seeds 0..N-1 per candidate")
    parser.add_argument("--candidate", action="append", default=[], metavar="'NAME: KEY=VALUE ...'")
    parser.add_argument("--data", default=None, help="synthetic generator style (default: the generator's default)")
    parser.add_argument("--out", type=Path, default=Path("runs/study_noise"))
    args = parser.parse_args()
    candidates = [parse_candidate(c) for c in args.candidate or ["baseline:"]]
    rows = []
    for cand in candidates:
        rows.append(run_candidate(args.out, PLANS[args.plan], cand, args.seeds, args.data))
        print(f"{cand.name}: {rows[-1]['wall_s'] / 60:.1f} min, study in {rows[-1]['study']}", flush=True)
    print_table(rows, args.seeds)


if __name__ == "__main__":
    main()
