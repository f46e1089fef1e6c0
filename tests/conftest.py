"""Shared fixtures: a tiny synthetic dataset, an attribute net trained on it with its heat-map caches (both built
once per test run, shared by the xdist workers of `make test`), and the overrides of a seconds-long training run."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


def _torch_threads() -> int:
    """One thread per pytest-xdist worker (`make test` runs two on the CI machine's 2 cores: no oversubscription);
    else at most 2, fewer when OMP_NUM_THREADS says so (a machine shared with other jobs)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"  # the subprocesses tests start (training, DDP) inherit it
        return 1
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1)))


torch.set_num_threads(_torch_threads())


def pytest_collection_modifyitems(config, items):
    """Under xdist, modules with tests marked ``slow`` run first, the most such tests first: `make test` hands
    out whole modules (``--dist loadfile``), and the short modules then fill in behind the long ones instead of
    one long module starting last. The order within a module is kept."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow: dict[Path, int] = {}
    for item in items:
        if item.get_closest_marker("slow"):
            slow[item.path] = slow.get(item.path, 0) + 1
    items.sort(key=lambda item: -slow.get(item.path, 0))  # stable: the collection order otherwise


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Image-check caches (sangal.data.verify) go to a temporary folder, never the user's ~/.cache; the ImageNet
    weights `make test` fetched (`sangal weights fetch`) stay where they are, read-only for the tests."""
    from sangal.models.weights import weights_dir

    previous = {key: os.environ.get(key) for key in ("SANGAL_CACHE_DIR", "SANGAL_WEIGHTS_DIR")}
    os.environ["SANGAL_WEIGHTS_DIR"] = str(weights_dir())
    os.environ["SANGAL_CACHE_DIR"] = str(tmp_path_factory.mktemp("sangal-cache"))
    yield
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is as fast, and immune to OpenMP oversubscription
    on a shared 2-core CI machine. Modules opt in with ``pytestmark = pytest.mark.usefixtures``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def shared_root(tmp_path_factory) -> Path:
    """The folder of this test run that every xdist worker sees (a worker's basetemp is ``<root>/popen-gwN``;
    without xdist it is the basetemp): artefacts built once there are shared, read-only, by all workers."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """8 identities x 3 cameras at 64x32, Market-1501 layout, attributes and masks (one copy for all workers:
    generate_synthetic stages it and reuses a finished one)."""
    from sangal.synthetic.generate import generate_synthetic

    return generate_synthetic(shared_root(tmp_path_factory) / "synth" / "tiny", num_ids=8, num_cams=3, seed=0,
                              height=64, width=32, images_per_cam=2)


@dataclass(frozen=True)
class AttrRun:
    """A finished attribute-net run: ``out`` (its ``attr/`` and ``aah/`` folders), the metrics its training
    returned and the folder names of the caches it built (split -> name)."""

    out: Path
    attr_metrics: dict
    caches: dict

    def copy_to(self, dest: Path, caches: bool = True) -> Path:
        """``dest`` with a copy of the run's attribute net (final checkpoint, logs) and, unless ``caches`` is false,
        its caches: a run to write in."""
        shutil.copytree(self.out / "attr", dest / "attr", ignore=shutil.ignore_patterns("last", ".*"))
        if caches:
            shutil.copytree(self.out / "aah", dest / "aah", ignore=shutil.ignore_patterns(".*"))
        return dest


@pytest.fixture(scope="session")
def tiny_attr_run(tiny_synth, tmp_path_factory) -> AttrRun:
    """An attribute net trained with the tiny overrides and the heat-map caches of every split, built once per
    test run under a lock (the first worker builds it, the others wait and reuse it). Read-only: a test that
    writes beside it works on :meth:`AttrRun.copy_to`."""
    from sangal.aah.job import build_caches
    from sangal.config import load_config
    from sangal.store.files import output_lock, write_json_atomic
    from sangal.train.attr import train_attribute_net

    out = shared_root(tmp_path_factory) / "tiny-attr-run"
    built = out / "built.json"
    with output_lock(out):
        if not built.is_file():
            cfg = load_config(None, _tiny_overrides(tiny_synth, out))
            metrics = train_attribute_net(cfg)
            caches = {split: path.name for split, path in build_caches(cfg).items()}
            write_json_atomic(built, {"attr_metrics": metrics, "caches": caches})
    return AttrRun(out, **json.loads(built.read_text()))


@pytest.fixture(scope="session")
def tiny_overrides():
    """Function (root, out) -> overrides of a seconds-long resnet18 run."""
    return _tiny_overrides


def _tiny_overrides(root: Path, out: Path) -> list[str]:
    """A resnet18 run at 64x32 that takes seconds: 2 epochs of 3 P×K steps."""
    return [
        f"out={out}", "data.dataset=synthetic", f"data.root={root}", "data.height=64", "data.width=32",
        "data.p=4", "data.k=2", "data.num_workers=0", "data.test_batch_size=32", "data.pad=2",
        "model.backbone=resnet18", "model.pretrained=false",
        "optim.lr=0.01", "optim.warmup_start_lr=0.001", "optim.warmup_epochs=1", "optim.milestones=[1]",
        "optim.milestone_lrs=[0.005]",
        "train.epochs=2", "train.max_steps_per_epoch=3", "train.device=cpu", "train.checkpoint_every=0",
        "train.log_every=1", "attr_train.epochs=1", "attr_train.batch_size=8",
        "model.mode=san-gal",  # the whole pipeline (attribute net, maps, ASAM); the default mode is id+attr
        "train.aah_targets=labels",  # the paper's literal maps; tests of the agnostic default say so
    ]
