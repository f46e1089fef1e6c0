"""Shared fixtures: a tiny synthetic dataset and the overrides of a seconds-long training run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# At most 2 threads (the CI machine's cores), fewer when OMP_NUM_THREADS says so (a machine shared with other jobs).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


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


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """8 identities x 3 cameras at 64x32, Market-1501 layout, attributes and masks."""
    from sangal.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("synth") / "tiny", num_ids=8, num_cams=3, seed=0,
                              height=64, width=32, images_per_cam=2)


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
        "train.aah_targets=labels",  # the paper's literal maps; tests of the agnostic default say so
    ]
