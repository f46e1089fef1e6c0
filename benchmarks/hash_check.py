"""What verifying an artefact on load costs: a Market-size gallery index and a ResNet-50 checkpoint.

Loads each artefact, side by side in one run, in four ways and prints the median of ``--repeats`` loads:

* ``no checks``: the loader with :func:`sangal.store.files.verify_sha256`, the JSON seal check and (for
  the index) the finite/unit-norm checks replaced by no-ops, i.e. what loading cost before issue 18;
* ``content checks`` (index only): paths inside the gallery, finite unit feature rows, probabilities;
* ``sha256, cold``: everything, with the digest cache (``<cache>/sha256.json``) emptied before each load;
* ``sha256, cached``: everything, the digests remembered by file stat from an earlier load.

The index has 19,732 images (Market-1501's gallery incl. junk) x 2048-d float32 features (161.6 MB) and
the 27 binary attribute heads of the Market schema; the checkpoint is a san-gal ReIDNet on ResNet-50
(751 ids, random weights) with its SGD momentum state, as training's ``last`` holds it. Files are
written just before they are read, so the OS page cache is warm in every row: the figures are hashing
and checking, not disk reads. The machine may be shared: the load average is printed.

    python benchmarks/hash_check.py                 # both artefacts, 3 repeats
    python benchmarks/hash_check.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sangal.store.files import file_sha256, seal_json

N_GALLERY, DIM, NUM_IDS = 19_732, 2048, 751


@contextlib.contextmanager
def patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def timed(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def unsealed(doc, *args):
    """check_seal without the check: what loaders did before documents were sealed."""
    return {k: v for k, v in doc.items() if k != "document_sha256"}


def forget_digests() -> None:
    from sangal.data.verify import cache_dir

    (cache_dir() / "sha256.json").unlink(missing_ok=True)


def write_index(out: Path) -> Path:
    """A gallery index in the format `sangal index` writes (features, attributes, sealed meta.json)."""
    from sangal.data.attributes import get_schema

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((N_GALLERY, DIM), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    schema = get_schema("market1501")
    probs = []
    for a in schema.attributes:
        p = rng.random((N_GALLERY, a.num_classes), dtype=np.float32)
        probs.append(p / p.sum(axis=1, keepdims=True))
    out.mkdir(parents=True)
    np.save(out / "features.npy", feats)
    labels = np.stack([p.argmax(axis=1) for p in probs], axis=1).astype(np.int64)
    np.savez(out / "attributes.npz", labels=labels, **{f"probs_{k}": p for k, p in enumerate(probs)})
    meta = {
        "format_version": 1, "gallery_dir": str(out.parent / "gallery"),
        "paths": [f"{i // 20:04d}/{i:05d}.jpg" for i in range(N_GALLERY)], "num_images": N_GALLERY,
        "feature_dim": DIM, "skipped": [], "checkpoint": {"path": "ckpt", "sha256": "0" * 64},
        "attr_checkpoint": None, "arch": {"mode": "id+attr"}, "aah": "exact", "backend": "exact", "faiss": None,
        "attributes": {"source": "reid", "dataset": schema.dataset, "colour_mode": schema.colour_mode,
                       "file": "attributes.npz",
                       "schema": [{"name": a.name, "classes": list(a.classes), "region": a.region}
                                  for a in schema.attributes]},
        "files": {name: file_sha256(out / name) for name in ("attributes.npz", "features.npy")},
    }
    (out / "meta.json").write_text(json.dumps(seal_json(meta)))
    return out


def write_checkpoint(out: Path) -> Path:
    """A ResNet-50 san-gal Re-ID checkpoint (random weights) with SGD momentum state, as `last` holds it."""
    from sangal.data.attributes import get_schema
    from sangal.models import ReIDNet
    from sangal.store.checkpoint import save_checkpoint

    torch.manual_seed(0)
    classes = get_schema("market1501").num_classes
    model = ReIDNet(NUM_IDS, classes, mode="san-gal", backbone="resnet50", pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers
    arch = {**model.arch_dict(), "dataset": "market1501", "colour_mode": "binary", "height": 256, "width": 128}
    return save_checkpoint(out, model, arch, {"epoch": 1, "step": 0}, optimizer=optimizer)


def mb(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def measure_index(root: Path, repeats: int) -> list[tuple[str, float]]:
    from sangal.search import index as index_module
    from sangal.search.index import GalleryIndex

    out = write_index(root / "index")
    load = lambda: GalleryIndex.load(out)  # noqa: E731
    with patched(index_module, "verify_sha256", lambda *a, **k: None), \
            patched(index_module, "check_seal", unsealed):
        with patched(index_module, "check_features", lambda *a, **k: None), \
                patched(index_module, "are_probabilities", lambda p: True), \
                patched(index_module, "relative_paths", lambda meta, path: list(meta["paths"])):
            bare = timed(load, repeats)
        content = timed(load, repeats)
    cold = timed(load, repeats, before=forget_digests)
    load()
    cached = timed(load, repeats)
    index = load()
    q = np.asarray(index.features[0])
    search = timed(lambda: np.asarray(index.features @ q), repeats)
    size = mb(out / "features.npy", out / "attributes.npz")
    print(f"\nMarket-size index: {N_GALLERY} x {DIM} float32 features + 27 attribute heads ({size:.1f} MB hashed)")
    return [("no checks", bare), ("content checks (paths, finite unit rows, probabilities)", content),
            ("content + sha256, cold", cold), ("content + sha256, cached", cached),
            ("for scale: one exact query (features @ q)", search)]


def measure_checkpoint(root: Path, repeats: int) -> list[tuple[str, float]]:
    from sangal.store import checkpoint as ck

    out = write_checkpoint(root / "ckpt")
    load = lambda: ck.load_checkpoint(out)  # noqa: E731
    with patched(ck, "verify_sha256", lambda *a, **k: None), patched(ck, "check_seal", unsealed):
        bare = timed(load, repeats)
    cold = timed(load, repeats, before=forget_digests)
    load()
    cached = timed(load, repeats)
    model = timed(lambda: ck.load_model(out), repeats)
    size = mb(out / ck.MODEL_FILE, out / ck.OPTIMIZER_FILE)
    print(f"\nResNet-50 checkpoint: model + SGD momentum state ({size:.1f} MB hashed)")
    return [("no checks", bare), ("sha256, cold", cold), ("sha256, cached", cached),
            ("for scale: load_model (build the net + load, cached)", model)]


def show(rows: list[tuple[str, float]]) -> None:
    base = rows[0][1]
    print("| load | median s | vs no checks |\n|---|---|---|")
    for name, seconds in rows:
        extra = "" if name.startswith("for scale") else f"+{seconds - base:.3f} s"
        print(f"| {name} | {seconds:.3f} | {extra if name != 'no checks' else '—'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="sangal-hash-") as tmp:
        os.environ["SANGAL_CACHE_DIR"] = str(Path(tmp) / "cache")  # a private digest cache
        show(measure_index(Path(tmp), args.repeats))
        show(measure_checkpoint(Path(tmp), args.repeats))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
