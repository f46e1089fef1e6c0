"""The attribute net with `attr_train.loss=ce` vs `balanced` (DeepMAR weights), side by side.

Trains the demo's attribute net (`sangal.experiments.demo.demo_config`, the standard plan's data:
300 synthetic identities plus 200 more for the attribute net only) once per loss and seed, the
same data and seeds for both, and prints mean accuracy, mA, per-attribute mA and the training
labels' class ratios, with the paired mA difference over seeds. ``--mat FILE`` prints the class
ratios and balanced weights of a real Lin et al. label file (its train split, per identity).

    .venv/bin/python benchmarks/attr_balanced.py [--seeds 1] [--style real|easy] [--out runs/bench_attr]
    .venv/bin/python benchmarks/attr_balanced.py --skip-train --mat /work/shared/data/attributes/market_attribute.mat
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np
import torch

from sangal.data import setup
from sangal.data.attributes import read_attribute_mat
from sangal.metrics.paired import paired_difference
from sangal.train.losses import ATTR_LOSSES, balanced_class_weights, class_ratios


def _data(out: Path, style: str | None) -> tuple[Path, list[str]]:
    """The standard demo plan's two synthetic sets (as `run_demo` draws them)."""
    from sangal.experiments.demo import PLANS
    from sangal.synthetic.generate import generate_synthetic

    plan = PLANS["standard"]
    kwargs = {}
    if style is not None:
        if "style" not in inspect.signature(generate_synthetic).parameters:
            raise SystemExit(f"--style {style}: this generate_synthetic has no style parameter (today's data only)")
        kwargs["style"] = style
    common = {"num_cams": plan.cams, "height": plan.height, "width": plan.width, **kwargs}
    root = generate_synthetic(out / "data", num_ids=plan.ids, seed=0, images_per_cam=plan.images_per_cam, **common)
    extra = generate_synthetic(out / "data_attr", num_ids=plan.attr_extra_ids, seed=1, images_per_cam=2, **common)
    return root, [f"attr_train.extra_roots=[{extra}]"]


def _train(out: Path, root: Path, extra: list[str], loss: str, seed: int) -> dict:
    """Train one attribute net (or reuse its recorded metrics) and return its test metrics."""
    from sangal.experiments.demo import PLANS, demo_config
    from sangal.train.attr import train_attribute_net

    run = out / f"{loss}_seed{seed}"
    done = run / "attr_metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = demo_config(run, PLANS["standard"], root, [*extra, f"attr_train.loss={loss}", f"train.seed={seed}"])
    t = time.time()
    metrics = train_attribute_net(cfg)
    metrics["seconds"] = time.time() - t  # wall time on whatever else the machine ran: not a cost figure
    done.write_text(json.dumps(metrics))
    return metrics


def _training_ratios(out: Path, root: Path, extra: list[str]) -> tuple[list[str], list[torch.Tensor]]:
    from sangal.experiments.demo import PLANS, demo_config
    from sangal.train.attr import attribute_training_set

    cfg = demo_config(out / "ratios", PLANS["standard"], root, extra)
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    targets = attribute_training_set(cfg, dataset, table)[1]
    return table.schema.names, class_ratios(targets, table.schema.num_classes)


def _ratio_text(r: torch.Tensor) -> str:
    return f"{float(r[1]):.3f}" if len(r) == 2 else "/".join(f"{float(v):.2f}" for v in r)


def compare(out: Path, style: str | None, seeds: int) -> None:
    out = out / f"style_{style}" if style is not None else out  # each style its own data and runs
    root, extra = _data(out, style)
    names, ratios = _training_ratios(out, root, extra)
    runs = {loss: [_train(out, root, extra, loss, s) for s in range(seeds)] for loss in ATTR_LOSSES}
    print(f"\nattribute net, demo recipe (MobileNetV2 from ImageNet, Adam, 2 epochs), data style "
          f"{style or 'as generate_synthetic draws it today'}, {seeds} seed(s); figures in % over the test images")
    for loss in ATTR_LOSSES:
        acc = [100 * m["accuracy"] for m in runs[loss]]
        ma = [100 * m["mA"] for m in runs[loss]]
        print(f"  {loss:>8}: mean accuracy {np.mean(acc):.1f}  mA {np.mean(ma):.1f}  "
              f"(per seed mA {', '.join(f'{v:.1f}' for v in ma)})")
    for key in ("mA", "accuracy"):
        d = paired_difference([100 * m[key] for m in runs["ce"]], [100 * m[key] for m in runs["balanced"]])
        ci = f"[{d.lo:+.1f}, {d.hi:+.1f}]" if d.n > 1 else "(no interval with one seed)"
        print(f"  balanced - ce, {key}: {d.diff:+.1f} {ci}")
    print("\n| attribute | positive ratio (or class ratios) in training labels | mA ce | mA balanced | diff |")
    print("|---|---|---|---|---|")
    for name, r in zip(names, ratios):
        ce = np.mean([100 * m["per_attribute"][name]["mA"] for m in runs["ce"]])
        bal = np.mean([100 * m["per_attribute"][name]["mA"] for m in runs["balanced"]])
        print(f"| {name} | {_ratio_text(r)} | {ce:.1f} | {bal:.1f} | {bal - ce:+.1f} |")


def real_weights(path: Path) -> None:
    """Class ratios and balanced weights of a real label file's train split (one label per identity)."""
    table = read_attribute_mat(path)
    labels = np.stack(list(table.labels["train"].values()))  # (identities, K)
    ratios = class_ratios(labels, table.schema.num_classes)
    weights = balanced_class_weights(ratios)
    print(f"\n{path.name}: {table.schema.dataset}, {len(labels)} train identities, K = {len(ratios)}")
    print("| attribute | class ratios | balanced weights | rare/common weight |\n|---|---|---|---|")
    for name, r, w in zip(table.schema.names, ratios, weights):
        print(f"| {name} | {' / '.join(f'{float(v):.3f}' for v in r)} | {' / '.join(f'{float(v):.2f}' for v in w)} "
              f"| {float(w.max() / w.min()):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_attr_balanced"))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--style", default=None, help="generate_synthetic's style, where it has one")
    parser.add_argument("--mat", type=Path, action="append", default=[], help="a Lin et al. .mat file (repeatable)")
    parser.add_argument("--skip-train", action="store_true", help="only the --mat tables")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_train:
        compare(args.out, args.style, args.seeds)
    for path in args.mat:
        real_weights(path)


if __name__ == "__main__":
    main()
