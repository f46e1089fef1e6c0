"""The default study's heat-map stage before and after issue 28: exact passes over the training images and seconds.

The demo's settings (MobileNetV2 attribute net at 128x64, agnostic training maps, fast test maps) on a synthetic
set (``--ids`` identities, half of them training). The attribute net keeps its random initial weights: what a
Grad-CAM pass costs does not depend on them. In this one process, at one thread:

* ``before``: the agnostic train cache the Re-ID net trains on and the label-guided train cache built only to
  distil the map predictor -- two exact Grad-CAM passes over the training images (what main did);
* ``after``: the one cache of every class's map both are read off (``sangal.aah.classes``) -- one exact pass;
* common to both: the distillation (``--distill-epochs``, from the new cache) and the forward-only query and
  gallery caches.

Passes are counted as the images that go through an exact Grad-CAM backward, over the training images. Seconds
are wall-clock and CPU (this process's user + system time): on a machine shared with other jobs the CPU seconds
are the figure to compare.

    nice -n 10 .venv/bin/python benchmarks/one_pass.py [--ids 40] [--distill-epochs 3] [--out DIR]   # ~6 min at load 6-8
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from sangal.aah import gradcam
from sangal.aah.cache import AAHCache
from sangal.aah.job import build_caches
from sangal.aah.spec import MapSpec, Targets
from sangal.data import setup
from sangal.experiments.demo import PLANS, demo_config
from sangal.models.attribute_net import AttributeNet
from sangal.store.checkpoint import save_checkpoint
from sangal.store.paths import default_paths
from sangal.synthetic.generate import generate_synthetic
from sangal.train.distill import distill
from sangal.train.maps import targets_classes

#: images that went through an exact Grad-CAM backward (sangal.aah.gradcam's two engines)
SEEN = [0]


def count_exact_passes() -> None:
    """Wrap both Grad-CAM engines so that every image they differentiate is counted in SEEN."""
    for name, batch_of in (("_functional_grad_cam", lambda args: args[1].shape[0]),
                           ("_graph_grad_cam", lambda args: args[0][0].shape[0])):
        def counting(*args, _real=getattr(gradcam, name), _batch_of=batch_of, **kw):
            SEEN[0] += int(_batch_of(args))
            return _real(*args, **kw)

        setattr(gradcam, name, counting)


def timed(fn) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, images through exact Grad-CAM) of ``fn()``."""
    SEEN[0] = 0
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu, SEEN[0]


def prepare(out: Path, ids: int, epochs: int):
    """The data, the demo's config (agnostic training maps, fast test maps) and a MobileNetV2 attribute checkpoint."""
    plan = PLANS["standard"]
    root = generate_synthetic(out / "data", num_ids=ids, num_cams=plan.cams, seed=0, height=plan.height,
                              width=plan.width, images_per_cam=plan.images_per_cam, progress=True)
    cfg = demo_config(out, plan, root, ["model.pretrained=false", f"distill.epochs={epochs}", "distill.patience=0",
                                        "train.channels_last=false"])
    torch.manual_seed(0)
    net = AttributeNet(targets_classes(cfg), backbone=cfg.model.attribute_backbone(), pretrained=False,
                       last_stride=cfg.model.last_stride).eval()
    arch = {**net.arch_dict(), "dataset": cfg.data.dataset, "colour_mode": cfg.data.colour_mode,
            "height": cfg.data.height, "width": cfg.data.width}
    save_checkpoint(default_paths(cfg)["attr_checkpoint"], net, arch, {"epoch": 0})
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=40, help="identities drawn (half train); the demo draws 300")
    parser.add_argument("--distill-epochs", type=int, default=3, help="the demo's distillation ran 15")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="one_pass_"))
    cfg = prepare(out, args.ids, args.distill_epochs)
    spec, paths = MapSpec.from_config(cfg), default_paths(cfg)
    for folder in (out / "before", paths["aah"], out / "distill"):  # measured from scratch, never resumed
        shutil.rmtree(folder, ignore_errors=True)
    assert (spec.targets, spec.method) == ("agnostic", "fast"), spec
    dataset = setup.load_reid_dataset(cfg)
    records, size, ckpt = dataset.train, (cfg.data.height, cfg.data.width), paths["attr_checkpoint"]
    labels = setup.attribute_targets(setup.load_attributes(cfg, dataset), records, "train")
    options = {"batch_size": cfg.data.test_batch_size, "progress": False}
    count_exact_passes()
    rows = {
        "before: agnostic train cache": timed(lambda: AAHCache.build_path(
            out / "before" / "train_agnostic", ckpt, records, *size, Targets("agnostic"), **options)),
        "before: labels train cache (distillation)": timed(lambda: AAHCache.build_path(
            out / "before" / "train", ckpt, records, *size, Targets("labels", labels), **options)),
        "after: every class's train cache": timed(lambda: AAHCache.build(paths["aah"], spec, "train", ckpt, records,
                                                                          size, **options)),
        f"both: distillation, {args.distill_epochs} epochs": timed(lambda: distill(cfg, resume=False)),
        "both: fast query + gallery caches": timed(lambda: build_caches(cfg, splits=["query", "gallery"])),
    }
    n = len(records)
    print(f"\n{n} training images, {len(dataset.query) + len(dataset.gallery)} test images, "
          f"{cfg.model.attribute_backbone()} {size[0]}x{size[1]}, {torch.get_num_threads()} thread")
    print(f"{'stage':<46}{'exact passes':>13}{'wall s':>9}{'CPU s':>9}{'CPU s / train image':>21}")
    for name, (wall, cpu, images) in rows.items():
        print(f"{name:<46}{images / n:>13.2f}{wall:>9.1f}{cpu:>9.1f}{cpu / n:>21.3f}")
    for when, other in (("before", "after"), ("after", "before")):
        kept = [r for name, r in rows.items() if not name.startswith(other)]
        print(f"heat-map stage {when:<7}{sum(r[2] for r in kept) / n:>3.0f} exact passes, {sum(r[0] for r in kept):7.1f} "
              f"s wall, {sum(r[1] for r in kept):7.1f} s CPU")
    both = sum(rows[k][1] for k in rows if k.startswith("both"))
    before = sum(rows[k][1] for k in rows if k.startswith("before"))
    after = rows["after: every class's train cache"][1]
    print(f"CPU after / before: exact passes {after / before:.2f}, whole stage {(after + both) / (before + both):.2f}")
    print(f"exact passes at 7,000 training images (CPU s, 1 thread, linear in the images): before "
          f"{7000 * before / n:.0f}, after {7000 * after / n:.0f}")


if __name__ == "__main__":
    main()
