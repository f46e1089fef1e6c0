import json
import logging
import sys

import torch

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
logging.basicConfig(level=logging.INFO)
from pathlib import Path

from sangal.config import from_dict, with_overrides
from sangal.experiments.leak import leak_summary, oracle_evaluation
from sangal.experiments.study import PAPER, PRESETS, variant_config

out = Path(sys.argv[1]); seeds = int(sys.argv[2])
doc = json.loads((out / "study.json").read_text())
config = {k: v for k, v in doc["config"].items() if k != "networks"}  # "networks" is a record, not a setting
cfg = with_overrides(from_dict(config), ["eval.aah=exact"])  # both evaluations with exact Grad-CAM test maps
paper = next(v for v in PRESETS["hypotheses"] if v.name == PAPER)
results = [oracle_evaluation(variant_config(cfg, paper, s)) for s in range(seeds)]
summary = leak_summary(results)
summary["per_seed"] = results
(out / "leak.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
