"""One exact pass per training set: every training-map mode and the distillation read the one cache of every
class's map, and those maps equal the one-class caches they replace (within float16 storage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sangal.aah.cache import AAHCache
from sangal.aah.classes import maps_for_mode
from sangal.aah.spec import MapSpec, Targets
from sangal.data.attributes import IGNORE_INDEX
from sangal.data.records import ImageRecord
from sangal.errors import CacheError
from sangal.models.attribute_net import AttributeNet
from sangal.store.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W, N = 64, 32, 6
CLASSES = [2, 3, 2]
ARCH = {"kind": "attribute", "backbone": "resnet18", "last_stride": 1, "attr_classes": CLASSES,
        "dataset": "none", "colour_mode": "binary", "height": H, "width": W}
#: float16 storage: a one-class cache rounds the normalised map, the cache of every class the signed map scaled by its
#: head's peak, normalised when read: they differ by one float16 step where the rounding differs (measured here: max
#: |diff| 3.8e-4, 90-96 % of the values equal); agnostic maps of two-class heads are the same division, to the bit
FLOAT16_BOUND = 5e-4


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("one_pass")
    torch.manual_seed(0)
    net = AttributeNet(CLASSES, backbone="resnet18", pretrained=False)
    for head in net.heads:  # predictions that differ between images and classes
        torch.nn.init.normal_(head.fc.weight, std=0.05)
        torch.nn.init.normal_(head.fc.bias, std=0.5)
    ckpt = save_checkpoint(root / "attr", net.eval(), ARCH, {"epoch": 1})
    rng = np.random.default_rng(0)
    records = []
    for i in range(N):
        path = root / "images" / f"{i:04d}_c1s1_000001_01.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path=path, pid=i, camid=0, raw_pid=i + 1))
    labels = np.stack([np.arange(N) % 2, np.arange(N) % 3, 1 - np.arange(N) % 2], axis=1).astype(np.int64)
    labels[3, 1] = IGNORE_INDEX

    def build(out: Path, targets: Targets, **kw) -> AAHCache:
        return AAHCache.build_path(out, ckpt, records, H, W, targets, batch_size=4, progress=False, **kw)

    every = AAHCache.build(root / "aah", MapSpec("agnostic"), "train", ckpt, records, (H, W), batch_size=4,
                           progress=False)
    one = {mode: build(root / mode, Targets(mode, labels if mode == "labels" else None))
           for mode in ("labels", "predicted", "agnostic")}
    return {"root": root, "ckpt": ckpt, "records": records, "labels": labels, "every": every, "one": one,
            "build": build}


def _read_off(every: AAHCache, mode: str, labels: np.ndarray) -> tuple[torch.Tensor, ...]:
    cm = every.class_maps(list(range(N)))
    if mode == "agnostic":
        return maps_for_mode(cm, "agnostic")
    given = torch.from_numpy(labels) if mode == "labels" else torch.full((N, len(CLASSES)), IGNORE_INDEX)
    return maps_for_mode(cm, "select", torch.where(given < 0, cm.predicted(), given))


@pytest.mark.parametrize("mode", ["labels", "predicted", "agnostic"])
def test_maps_read_off_the_one_pass_equal_the_one_class_caches(caches: dict, mode: str) -> None:
    every, one = caches["every"], caches["one"][mode]
    assert every.path.name == "train_classes" and every.manifest["targets"]["mode"] == "classes"
    for got, want in zip(_read_off(every, mode, caches["labels"]), one.get(list(range(N)))):
        assert got.shape == want.shape and float(want.amax()) > 0
        assert float((got - want).abs().max()) <= FLOAT16_BOUND
        if mode == "agnostic":  # |S_1| / max |S_1| either way
            binary = [k for k, c in enumerate(CLASSES) if c == 2]
            assert torch.equal(got[:, binary], want[:, binary])


def test_the_train_cache_is_opened_through_any_training_mode_spec(caches: dict) -> None:
    for targets in ("labels", "predicted", "soft", "noisy"):
        opened = AAHCache.open(caches["root"] / "aah", MapSpec(targets), "train", attr_checkpoint=caches["ckpt"],
                               records=caches["records"], size=(H, W))
        assert opened.path == caches["every"].path


def test_precision_is_part_of_a_caches_identity(caches: dict) -> None:
    bf16 = caches["build"](caches["root"] / "bf16", Targets("predicted"), precision="bf16")
    assert bf16.manifest["precision"] == "bf16" and caches["one"]["predicted"].manifest["precision"] == "float32"
    AAHCache.open_path(bf16.path, precision="bf16")
    with pytest.raises(CacheError, match=r"computed in bf16, not float32 \(train.amp\)"):
        AAHCache.open_path(bf16.path, precision="float32")
    with pytest.raises(CacheError, match="computed in float32, not bf16"):
        AAHCache.open_path(caches["one"]["predicted"].path, precision="bf16")
    # a spec of another precision looks in another folder: a float32 cache is never read as a bf16 one
    with pytest.raises(CacheError, match="train_classes_bf16 does not exist"):
        AAHCache.open(caches["root"] / "aah", MapSpec(precision="bf16"), "train")
    got, want = bf16.get(list(range(N))), caches["one"]["predicted"].get(list(range(N)))
    assert all(float((g - w).abs().mean()) < 0.1 for g, w in zip(got, want))  # same maps, bf16 rounding
