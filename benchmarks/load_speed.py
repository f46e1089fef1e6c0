"""CPU cost of loading a checkpoint: the old load (random initialisation, then every weight copied over it)
against :func:`sangal.store.checkpoint.load_model` (built on the meta device, the file's tensors assigned).

The checkpoints are the ones the tests load: a resnet18 and a mobilenet_v2 Re-ID net (san-gal, 64x32, 8 ids (the tests' tiny synthetic set),
Market-1501's 27 attribute heads) and a resnet18 attribute net. Both loads of one checkpoint run interleaved,
``--repeats`` times each, in one process, so machine load hits them alike; the median process CPU seconds
(and wall) are printed, with whether each load changed the global RNG state; and the new load as the first
build of its backbone in a process (its stages probed on the meta device, not read from the cache).

    python benchmarks/load_speed.py                # 5 repeats
    python benchmarks/load_speed.py --repeats 2    # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sangal.models import backbone
from sangal.store import checkpoint as ck

MARKET_CLASSES = [2] * 9 + [4] + [2] * 17  # K = 27
BASE = {"last_stride": 1, "attr_classes": MARKET_CLASSES, "extra_sigmoid": False,
        "dataset": "market1501", "colour_mode": "binary", "height": 64, "width": 32}
ARCHES = {
    "reid resnet18 san-gal": {**BASE, "kind": "reid", "backbone": "resnet18", "num_ids": 8, "mode": "san-gal"},
    "reid mobilenet_v2 san-gal": {**BASE, "kind": "reid", "backbone": "mobilenet_v2", "num_ids": 8,
                                  "mode": "san-gal"},
    "attribute resnet18": {**BASE, "kind": "attribute", "backbone": "resnet18"},
}


def old_load(path: Path) -> torch.nn.Module:
    """The load before the meta-device build: a randomly initialised model (its stages probed at every build),
    every weight then copied in."""
    backbone._PROBED.clear()
    ckpt = ck.load_checkpoint(path)
    model = ck.build_model(ckpt.arch, pretrained=False)
    ck.load_weights(model, ckpt, ckpt.arch)
    return model.eval()


def new_load(path: Path) -> torch.nn.Module:
    """Today's load; its backbone's stages were probed by an earlier build in this process."""
    return ck.load_model(path)[0]


def new_first_load(path: Path) -> torch.nn.Module:
    """Today's load as the first build of its backbone in a process: the stages probed on the meta device."""
    backbone._PROBED.clear()
    return ck.load_model(path)[0]


def timed(load, path: Path) -> tuple[float, float, bool]:
    """(process CPU seconds, wall seconds, whether the global RNG state changed) of one load."""
    rng = torch.get_rng_state()
    cpu, wall = time.process_time(), time.perf_counter()
    load(path)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu, wall, not torch.equal(rng, torch.get_rng_state())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="loads of each kind per checkpoint (median printed)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch in ARCHES.items():
            torch.manual_seed(0)
            path = ck.save_checkpoint(Path(tmp) / name.replace(" ", "_"), ck.build_model(arch), arch, {})
            new_load(path), old_load(path)  # warm-up: imports, file cache
            runs = {"old": [], "new": [], "first": []}
            for _ in range(args.repeats):
                for label, load in (("old", old_load), ("new", new_load), ("first", new_first_load)):
                    runs[label].append(timed(load, path))
            cpu = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
            wall = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
            moved = {k: any(r[2] for r in v) for k, v in runs.items()}
            print(f"{name:28s} old {cpu['old']:.3f} s CPU ({wall['old']:.3f} s wall, RNG moved {moved['old']})  "
                  f"new {cpu['new']:.3f} s CPU ({wall['new']:.3f} s wall, RNG moved {moved['new']})  "
                  f"ratio {cpu['old'] / max(cpu['new'], 1e-9):.1f}x; new as the first load in a process "
                  f"{cpu['first']:.3f} s CPU (RNG moved {moved['first']})")


if __name__ == "__main__":
    main()
