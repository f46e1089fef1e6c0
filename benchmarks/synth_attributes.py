"""How hard the synthetic attributes are: the demo's attribute net on each generator style, side by side.

For every style it draws the demo's data (``sangal demo`` standard plan: 300 identities of seed 0,
plus 200 of seed 1 for the attribute net only) into a temporary folder, trains the demo's attribute
net exactly as the demo does (``demo_config``: ImageNet MobileNetV2 at 128x64, 2 Adam epochs at 1e-3)
and prints mean accuracy, mA and per-attribute mA on the test identities, the generation time, and
each field's share of "yes" (second class) in the written labels against the real Market files.
Real crops (issue 20, held out): mean accuracy 88.5 %, mA 65.9 %.

    nice -n 10 .venv/bin/python benchmarks/synth_attributes.py [--styles easy,real] [--data-seed 0]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from sangal.experiments.demo import PLANS, demo_config
from sangal.experiments.study import ensure_attribute_net
from sangal.synthetic.generate import ATTRIBUTE_FIELDS, generate_synthetic, plan_synthetic
from sangal.synthetic.stats import CARRY, COUNTS, LOWER_NAMES, NODES, UPPER_NAMES


def real_shares() -> dict[str, float]:
    """Share of "yes" / second class per Market field in the real files (train + test), from the committed table."""
    p = {node.name: np.sum(list(COUNTS[node.name].values()), axis=0) for node in NODES}
    p = {name: counts / counts.sum() for name, counts in p.items()}
    shares = {f: float(p[f][1]) for f in ("gender", "hair", "up", "down", "clothes", "hat")}
    shares.update({f: float(p["carry"][i]) for i, f in enumerate(CARRY) if i})
    shares.update({"up" + c: float(p["upper_colour"][i]) for i, c in enumerate(UPPER_NAMES)})
    shares.update({"down" + c: float(p["lower_colour"][i]) for i, c in enumerate(LOWER_NAMES)})
    return shares


def generated_shares(roots_params: list[dict]) -> dict[str, float]:
    attrs = [a for params in roots_params for a in plan_synthetic(**params).attributes.values()]
    return {f: float(np.mean([a[f] == 2 for a in attrs])) for f in ATTRIBUTE_FIELDS if f != "age"}


def measure(style: str, data_seed: int, tmp: Path) -> dict:
    plan = PLANS["standard"]
    params = dict(num_ids=plan.ids, num_cams=plan.cams, seed=data_seed, height=plan.height, width=plan.width,
                  images_per_cam=plan.images_per_cam, style=style)
    extra = dict(params, num_ids=plan.attr_extra_ids, seed=data_seed + 1, images_per_cam=2)
    start = time.perf_counter()
    root = generate_synthetic(tmp / f"{style}-data", **params)
    attr_root = generate_synthetic(tmp / f"{style}-data_attr", **extra)
    generation = time.perf_counter() - start
    cfg = demo_config(tmp / f"{style}-run", plan, root, [f"attr_train.extra_roots=[{attr_root}]"])
    start = time.perf_counter()
    scores = ensure_attribute_net(cfg)
    return {"scores": scores, "generation_s": generation, "training_s": time.perf_counter() - start,
            "shares": generated_shares([params, extra])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", default="easy,real", help="comma list of generator styles")
    parser.add_argument("--data-seed", type=int, default=0, help="the demo's data seeds are this and this + 1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    styles = args.styles.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        results = {style: measure(style, args.data_seed, Path(tmp)) for style in styles}
    real = real_shares()
    print(f"\nthe demo's attribute net (standard plan, data seeds {args.data_seed}/{args.data_seed + 1}); "
          "real crops (issue 20): mean accuracy 88.5 %, mA 65.9 %")
    print(f"{'':24}" + "".join(f"{s:>16}" for s in styles))
    for key in ("mean_accuracy", "mA"):
        print(f"{key:24}" + "".join(f"{results[s]['scores'][key]:16.1f}" for s in styles))
    for key in ("generation_s", "training_s"):
        print(f"{key:24}" + "".join(f"{results[s][key]:16.1f}" for s in styles))
    print("\nper attribute: mA (test ids) | share of 'yes' / second class in the written labels (500 ids)")
    print(f"{'attribute':14}" + "".join(f"{'mA ' + s:>11}" for s in styles) + f"{'real':>8}"
          + "".join(f"{s:>8}" for s in styles))
    for name in results[styles[0]]["scores"]["per_attribute"]:
        row = "".join(f"{results[s]['scores']['per_attribute'][name]['mA']:11.1f}" for s in styles)
        share = "".join(f"{100 * results[s]['shares'].get(name, float('nan')):8.1f}" for s in styles)
        print(f"{name:14}{row}{100 * real.get(name, float('nan')):8.1f}{share}")


if __name__ == "__main__":
    main()
