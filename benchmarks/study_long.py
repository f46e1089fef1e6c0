"""The training-map modes at four times the demo's steps, where the label shortcut shows (issue 20/21).

At the demo's 70 steps no row's oracle gap exceeds 2 Rank-1 points on the real-style data; one run at
4x the steps (280 steps, the learning-rate drop moved from epoch 4 to 16) showed a gap of +8.8. This
runs the `maps` preset rows (plus the form `study_guidance.py` chose) at that budget, reusing a
`study_guidance.py` folder's data, attribute net (held-out identities, so `noisy` works), heat-map
caches and map predictor. Seeds can be split over processes (``--seeds 0`` and ``--seeds 1`` into two
``--out`` folders); `--leak-all` checks the leak on every seed of the process:

    .venv/bin/python benchmarks/study_long.py --guidance runs/study_guidance --seeds 0 1 --out runs/study_long
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from sangal.experiments.demo import PLANS, demo_config
from sangal.experiments.study import PRESETS, Variant, format_study, run_study

EPOCHS, MILESTONE = 20, 16  # 4x the standard plan's 5 epochs, the drop at the same fraction (4/5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guidance", type=Path, required=True, help="a study_guidance.py --out folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/study_long"))
    parser.add_argument("--form", action="append", default=[], help="extra rows: agnostic maps with this form")
    parser.add_argument("--holdout", type=float, default=0.1, help="as the guidance study's attribute net")
    args = parser.parse_args()
    g = args.guidance
    plan = replace(PLANS["standard"], epochs=EPOCHS)
    shared = [f"attr_train.extra_roots=[{g / 'data_attr'}]", f"attr_train.holdout={args.holdout}",
              f"train.attr_checkpoint={g / 'main' / 'attr' / 'checkpoints' / 'final'}",
              f"train.aah_cache={g / 'main' / 'aah'}", f"optim.milestones=[{MILESTONE}]"]
    cfg = demo_config(args.out, plan, g / "data", shared)
    rows = [*(v for v in PRESETS["maps"] if v.name != "id+attr"), *(Variant(f"san-gal, agnostic maps, {f} form", (
        "model.mode=san-gal", "train.aah_targets=agnostic", f"model.asam_form={f}")) for f in args.form)]
    doc = run_study(cfg, rows, list(args.seeds), localisation_images=0, leak_seeds=None)
    print(format_study(doc))
    print(json.dumps({n: r["gap"] for n, r in (doc.get("leak") or {}).get("rows", {}).items()}, indent=1))


if __name__ == "__main__":
    main()
