"""Hypothesis study on the demo's data and config (same plan as `sangal demo`): ROWS of the `hypotheses` preset,
or all of them when ROWS is omitted.  Usage: run_study.py OUT SEEDS [ROWS separated by |]"""
import logging
import sys
from pathlib import Path

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
from sangal.experiments.demo import PLANS, demo_config
from sangal.experiments.study import PRESETS, format_study, run_study
from sangal.synthetic.generate import generate_synthetic

out = Path(sys.argv[1]); seeds = int(sys.argv[2])
rows = sys.argv[3].split("|") if len(sys.argv) > 3 else [v.name for v in PRESETS["hypotheses"]]
plan = PLANS["standard"]
root = generate_synthetic(out / "data", num_ids=plan.ids, num_cams=plan.cams, seed=0, height=plan.height,
                          width=plan.width, images_per_cam=plan.images_per_cam, progress=False)
attr_root = generate_synthetic(out / "data_attr", num_ids=plan.attr_extra_ids, num_cams=plan.cams, seed=1,
                               height=plan.height, width=plan.width, images_per_cam=2, progress=False)
cfg = demo_config(out, plan, root, [f"attr_train.extra_roots=[{attr_root}]"])
table = {v.name: v for v in PRESETS["hypotheses"] + PRESETS["table1"][1:2]}
variants = [table[r] for r in rows]
doc = run_study(cfg, variants, list(range(seeds)))
print(format_study(doc))
