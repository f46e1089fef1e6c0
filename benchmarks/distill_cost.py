"""What distilling the forward-only map predictor costs, against one Re-ID run on the same data, side by side.

A synthetic set is drawn (``--ids``, ``--images-per-cam``), the demo's attribute net (MobileNetV2 from
ImageNet, 128x64) is trained and its exact training maps cached; then, in this one process:

* ``before``: 15 epochs with the frozen net re-run every epoch, which is what a 7,260-image set (the held-out
  real set the issue measured on) got before the inputs were kept in memory: its layer4 activations
  did not fit the 1 GB budget;
* ``kept``: 15 epochs with the frozen inputs kept in memory (layer4 as its logit maps);
* ``early``: kept in memory, and stopped once held-out Pearson r has not risen by 0.002 for 2 epochs;
* one ``id`` Re-ID run on the same training set (the demo's recipe, 4 epochs, one seed).

It prints wall times, epochs and held-out agreement per stage, and each fit's cost over the Re-ID run.

    .venv/bin/python benchmarks/distill_cost.py [--ids 300] [--images-per-cam 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sangal.aah.job import build_caches
from sangal.config import with_overrides
from sangal.experiments.demo import PLANS, demo_config
from sangal.synthetic.generate import generate_synthetic
from sangal.train import distill as distill_module
from sangal.train.attr import train_attribute_net
from sangal.train.reid import train_reid

FITS = {"before": ["distill.patience=0"], "kept": ["distill.patience=0"],
        "early": ["distill.patience=2", "distill.min_delta=0.002"]}


def prepare(out: Path, ids: int, images_per_cam: int):
    """The data, the attribute net and its exact training maps (reused when already there)."""
    plan = PLANS["standard"]
    root = generate_synthetic(out / "data", num_ids=ids, num_cams=plan.cams, seed=0, height=plan.height,
                              width=plan.width, images_per_cam=images_per_cam, progress=True)
    cfg = demo_config(out, plan, root, ["train.max_steps_per_epoch=0", "train.epochs=4"])
    if not (out / "attr" / "checkpoints" / "final").is_dir():
        train_attribute_net(cfg)
    build_caches(cfg, splits=["train"])
    return cfg


def fit(cfg, name: str) -> dict:
    """One distillation from scratch (its own checkpoint folder), timed."""
    budget = distill_module.ACTIVATION_BUDGET_BYTES
    distill_module.ACTIVATION_BUDGET_BYTES = 0 if name == "before" else budget
    try:
        start = time.perf_counter()
        shared = [f"train.attr_checkpoint={cfg.out}/attr/checkpoints/final", f"train.aah_cache={cfg.out}/aah"]
        result = distill_module.distill(with_overrides(cfg, [f"out={cfg.out}/fit-{name}", *shared, *FITS[name]]),
                                        overwrite=True)  # from scratch: an earlier fit's folder is replaced
        result["seconds"] = time.perf_counter() - start
    finally:
        distill_module.ACTIVATION_BUDGET_BYTES = budget
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=300, help="identities (half train)")
    parser.add_argument("--images-per-cam", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sangal-distill-cost-"))
    cfg = prepare(out, args.ids, args.images_per_cam)
    results = {name: fit(cfg, name) for name in FITS}
    start = time.perf_counter()
    train_reid(with_overrides(cfg, ["model.mode=id", f"out={out}/reid-id"]), overwrite=True)
    reid_seconds = time.perf_counter() - start
    print(f"\ntraining images: {results['kept']['train_images'] + results['kept']['val_images']}; "
          f"one id Re-ID run (4 epochs): {reid_seconds:.0f} s")
    print(f"{'fit':<8}{'epochs':>7}{'seconds':>9}{'x Re-ID run':>13}{'layer2 r':>10}{'layer3 r':>10}")
    for name, r in results.items():
        print(f"{name:<8}{r['epochs']:>7}{r['seconds']:>9.0f}{r['seconds'] / reid_seconds:>13.2f}"
              f"{r['val']['layer2']['pearson']:>10.3f}{r['val']['layer3']['pearson']:>10.3f}")


if __name__ == "__main__":
    main()
