"""Attribute guidance without the shortcut (issue 21): every training-map mode, then every ASAM form, then the
balanced attribute net, as paired-seed `sangal study` runs on the demo's data and budget.

Stage 1 (`maps` preset): id, id+attr and SAN-GAL (paper form) with each training-map mode. The attribute
net is trained with ``attr_train.holdout`` so that the ``noisy`` mode has a held-out confusion to draw from
(every row shares that one net). Stage 2: SAN-GAL with each ASAM form, on the stage-1 mode chosen by the
rule below. Stage 3: that configuration once more with an attribute net trained with ``attr_train.loss=
balanced`` (its own net, so its own folder; the `id` runs are the same seeds' and are reused).

The rule (the issue's, fixed before any run): among rows whose label-leak oracle gap is within 1 Rank-1
point of zero (rows with class-agnostic maps follow no class and have none), the highest mean paired Rank-1
difference against `id`. Everything runs in one folder per attribute net, so a stopped study resumes:

    .venv/bin/python benchmarks/study_guidance.py --seeds 3 --out runs/study_guidance
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from sangal.experiments.demo import PLANS, demo_config, demo_data
from sangal.experiments.study import PRESETS, Variant, format_study, run_dir, run_study

FORMS = ("mean1", "residual", "gated", "mixed")
GAP_LIMIT = 1.0  # Rank-1 points


def choose(doc: dict, names: list[str]) -> str:
    """The rule: the best mean paired Rank-1 difference among ``names`` whose oracle gap is within GAP_LIMIT."""
    leak = doc.get("leak") or {"rows": {}, "not_applicable": []}
    ok = [n for n in names if n in leak["not_applicable"]
          or (n in leak["rows"] and abs(leak["rows"][n]["gap"]["rank1"]) <= GAP_LIMIT)]
    if not ok:
        raise SystemExit(f"no row of {names} has an oracle gap within {GAP_LIMIT} Rank-1 points")
    return max(ok, key=lambda n: doc["paired"][n]["rank1"]["diff"])


def overrides_of(doc: dict, name: str) -> tuple[str, ...]:
    return tuple(doc["variants"][name]["overrides"])


def reuse_id_runs(source: Path, target: Path, seeds: list[int]) -> None:
    """Copy the `id` rows' results: they do not depend on the attribute net, and the seeds are the same."""
    for seed in seeds:
        src, dst = run_dir(source, "id", seed) / "result.json", run_dir(target, "id", seed) / "result.json"
        if src.is_file() and not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="standard", help="the demo plan (sizes, budget)")
    parser.add_argument("--seeds", type=int, default=3, help="paired seeds 0..N-1")
    parser.add_argument("--data", default="real", help="synthetic generator style")
    parser.add_argument("--holdout", type=float, default=0.1, help="attr_train.holdout of the shared attribute net")
    parser.add_argument("--out", type=Path, default=Path("runs/study_guidance"))
    parser.add_argument("--set", action="append", default=[], help="config override of every row")
    args = parser.parse_args()
    plan, seeds = PLANS[args.plan], list(range(args.seeds))
    data_root, extra = demo_data(args.out, plan, style=args.data)
    base = [*extra, f"attr_train.holdout={args.holdout}", *args.set]
    cfg = demo_config(args.out / "main", plan, data_root, base)
    rows = list(PRESETS["maps"])
    doc = run_study(cfg, rows, seeds, localisation_images=0, leak_seeds=1)
    mode = choose(doc, [v.name for v in rows if v.name.startswith("san-gal")])
    print(f"stage 1: {mode} chosen", flush=True)
    forms = [Variant(f"{mode}, {form} form", (*overrides_of(doc, mode), f"model.asam_form={form}")) for form in FORMS]
    rows += forms
    doc = run_study(cfg, rows, seeds, localisation_images=0, leak_seeds=1)
    best = choose(doc, [mode, *(v.name for v in forms)])
    print(f"stage 2: {best} chosen", flush=True)
    balanced_cfg = demo_config(args.out / "balanced", plan, data_root, [*base, "attr_train.loss=balanced"])
    reuse_id_runs(args.out / "main", args.out / "balanced", seeds)
    rows3 = [rows[0], Variant(f"{best}, balanced attribute net", overrides_of(doc, best))]
    doc3 = run_study(balanced_cfg, rows3, seeds, localisation_images=0, leak_seeds=1)
    print(format_study(doc))
    print(format_study(doc3))
    summary = {"mode": mode, "best": best, "main": str(args.out / "main" / "study.json"),
               "balanced": str(args.out / "balanced" / "study.json")}
    (args.out / "choice.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
