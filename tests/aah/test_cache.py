"""Offline AAH cache: values, resumable build, refusal of stale or mismatched caches."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sangal.aah import modes as aah_modes
from sangal.aah.build import BuildInterrupted
from sangal.aah.cache import AAHCache, align_aah
from sangal.aah.gradcam import attribute_heatmaps
from sangal.aah.spec import Targets
from sangal.data.attributes import IGNORE_INDEX
from sangal.data.dataset import ImageDataset
from sangal.data.records import ImageRecord
from sangal.data.transforms import build_transforms
from sangal.errors import CacheError
from sangal.models.attribute_net import AttributeNet
from sangal.store.checkpoint import load_checkpoint, save_checkpoint

H, W, N = 64, 32, 6
ARCH = {"kind": "attribute", "backbone": "resnet18", "last_stride": 1, "attr_classes": [2, 3],
        "dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}


def _records(folder: Path, names: list[str], seed: int = 0) -> list[ImageRecord]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i, name in enumerate(names):
        path = folder / name
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path=path, pid=i, camid=0, raw_pid=i + 1))
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("aah")
    torch.manual_seed(0)
    net = AttributeNet([2, 3], backbone="resnet18", pretrained=False).eval()
    ckpt = save_checkpoint(root / "attr" / "final", net, ARCH, {"epoch": 1})
    records = _records(root / "images", [f"{i:04d}_c1s1_000001_01.jpg" for i in range(N)])
    labels = np.stack([np.arange(N) % 2, np.arange(N) % 3], axis=1).astype(np.int64)  # (N, K)
    labels[3, 1] = IGNORE_INDEX
    s = {"root": root, "net": net, "ckpt": ckpt, "records": records, "labels": labels}
    s["built"] = _build(s, root / "built")  # shared, read-only: tests copy it before changing it
    return s


@pytest.fixture()
def counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Indices of the first image of every batch attribute_heatmaps is called on, image counts."""
    calls: list[int] = []

    def counting(net, images, classes=None, **kw):
        calls.append(images.shape[0])
        return attribute_heatmaps(net, images, classes, **kw)

    monkeypatch.setattr(aah_modes, "attribute_heatmaps", counting)
    return calls


def _build(s: dict, out: Path, **kw) -> AAHCache:
    kw.setdefault("targets", Targets("labels", s["labels"]))
    return AAHCache.build_path(out, s["ckpt"], kw.pop("records", s["records"]), H, W, batch_size=3, chunk_size=3,
                          progress=False, **kw)


def test_cache_equals_direct_gradcam(setup: dict) -> None:
    cache = setup["built"]
    assert len(cache) == N
    tf = build_transforms(H, W, train=False)
    images = torch.stack([ImageDataset(setup["records"], tf)[i]["image"] for i in range(N)])
    direct = attribute_heatmaps(setup["net"], images, torch.from_numpy(setup["labels"]))
    got = cache.get(list(range(N)))
    for g, d, hw in zip(got, direct, [(8, 4), (4, 2), (4, 2)]):
        assert g.dtype == torch.float32 and tuple(g.shape) == (N, 2, *hw)
        assert d.amax() > 0
        torch.testing.assert_close(g, d, atol=1e-3, rtol=1e-3)
    some = cache.get(torch.tensor([5, 2]))
    torch.testing.assert_close(some[0], got[0][[5, 2]])
    assert cache.index_of(setup["records"][4].path) == 4
    assert cache.index_of(setup["records"][4].path.name) == 4  # relative to the image root
    with pytest.raises(CacheError, match="not in AAH cache"):
        cache.index_of("/elsewhere/unknown.jpg")
    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["targets"]["mode"] == "labels"
    assert manifest["images"]["count"] == N and len(manifest["images"]["paths"]) == N
    assert manifest["schema"]["num_classes"] == [2, 3] and manifest["dtype"] == "float16"
    assert not cache.path.with_name("built.partial").exists()


def test_predicted_classes_without_targets(setup: dict, tmp_path: Path) -> None:
    cache = _build(setup, tmp_path / "query", targets=Targets("predicted"))
    tf = build_transforms(H, W, train=False)
    images = torch.stack([ImageDataset(setup["records"], tf)[i]["image"] for i in range(N)])
    torch.testing.assert_close(cache.get(range(N))[2], attribute_heatmaps(setup["net"], images)[2],
                               atol=1e-3, rtol=1e-3)
    assert cache.manifest["targets"]["mode"] == "predicted"


def test_killed_build_resumes_without_recomputing(setup: dict, tmp_path: Path, counter: list[int]) -> None:
    out = tmp_path / "resumed"
    with pytest.raises(BuildInterrupted):
        _build(setup, out, stop_after_chunks=1)
    assert sum(counter) == 3  # chunk 0 only
    with pytest.raises(CacheError, match=r"incomplete.*1/2 chunks.*sangal aah"):
        AAHCache.open_path(out)
    counter.clear()
    resumed = _build(setup, out)
    assert sum(counter) == N - 3  # chunk 1, chunk 0 not recomputed
    for a, b in zip(resumed.arrays, setup["built"].arrays):  # same as an uninterrupted build
        assert np.array_equal(a, b)
    assert not (tmp_path / "resumed.partial").exists()


def test_resume_with_other_inputs_starts_over(setup: dict, tmp_path: Path, counter: list[int],
                                               caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "c"
    with pytest.raises(BuildInterrupted):
        _build(setup, out, stop_after_chunks=1)
    counter.clear()
    with caplog.at_level(logging.INFO, logger="sangal.aah"):
        # a resumed build would finish the last chunk; starting over stops after chunk 0 again
        with pytest.raises(BuildInterrupted):
            _build(setup, out, targets=Targets("predicted"), stop_after_chunks=1)
    assert sum(counter) == 3
    assert "over" in caplog.text and "targets" in caplog.text


def test_build_skips_an_up_to_date_cache(setup: dict, tmp_path: Path, counter: list[int]) -> None:
    shutil.copytree(setup["built"].path, tmp_path / "c")
    _build(setup, tmp_path / "c")
    assert counter == []
    with pytest.raises(BuildInterrupted):  # another normalisation: rebuilt (stopped after chunk 0)
        _build(setup, tmp_path / "c", normalize="none", stop_after_chunks=1)
    assert sum(counter) == 3
    AAHCache.open_path(tmp_path / "c", normalize="max")  # the old cache stays until the new one is complete


def test_open_refuses_stale_checkpoint(setup: dict, tmp_path: Path) -> None:
    shutil.copytree(setup["built"].path, tmp_path / "c")
    retrained = tmp_path / "attr2"
    shutil.copytree(setup["ckpt"], retrained)
    net = AttributeNet([2, 3], backbone="resnet18", pretrained=False)
    net.load_state_dict(load_checkpoint(retrained).weights)
    with torch.no_grad():
        net.heads[0].fc.bias += 0.5
    save_checkpoint(retrained, net, ARCH, {"epoch": 2})
    AAHCache.open_path(tmp_path / "c", attr_ckpt_dir=setup["ckpt"])  # the original still matches
    with pytest.raises(CacheError, match=r"stale: built from checkpoint sha256 [0-9a-f]{12}.*attr2 now has"):
        AAHCache.open_path(tmp_path / "c", attr_ckpt_dir=retrained)


def test_open_refuses_other_images_and_inputs(setup: dict, tmp_path: Path) -> None:
    out = setup["built"].path
    recs = setup["records"]
    extra = _records(setup["root"] / "images", ["0099_c2s1_000001_01.jpg"], seed=9)
    AAHCache.open_path(out, records=recs, height=H, width=W, targets=Targets("labels", setup["labels"]), schema_names=["attr0", "attr1"])
    with pytest.raises(CacheError, match="1 images added and 2 removed"):
        AAHCache.open_path(out, records=recs[2:] + extra)
    with pytest.raises(CacheError, match="another order"):
        AAHCache.open_path(out, records=recs[::-1])
    with pytest.raises(CacheError, match="height 64, not 128"):
        AAHCache.open_path(out, height=128)
    with pytest.raises(CacheError, match="attributes"):
        AAHCache.open_path(out, schema_names=["hat", "bag"])
    with pytest.raises(CacheError, match="other attribute labels"):
        AAHCache.open_path(out, targets=Targets("labels", 1 - setup["labels"].clip(0)))
    with pytest.raises(CacheError, match="does not exist"):
        AAHCache.open_path(tmp_path / "missing")


def test_open_refuses_corrupt_files(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "c"
    shutil.copytree(setup["built"].path, out)
    data = (out / "aah3.npy").read_bytes()
    (out / "aah3.npy").write_bytes(data[:-2] + bytes([data[-2] ^ 0xFF, data[-1]]))  # one flipped value
    with pytest.raises(CacheError, match=r"aah3\.npy: sha256 .* differs from .* recorded .*; rebuild it"):
        AAHCache.open_path(out)
    (out / "aah3.npy").write_bytes(data[: len(data) // 2])
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"], manifest["document_sha256"]  # as caches of older versions were written
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"aah3\.npy is corrupt or truncated"):
        AAHCache.open_path(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "height": 7, "document_sha256": "0" * 64}))
    with pytest.raises(CacheError, match=r"manifest\.json: its content does not match the sha256"):
        AAHCache.open_path(out)
    (out / "manifest.json").write_text("{")
    with pytest.raises(CacheError, match=r"manifest\.json is not valid JSON"):
        AAHCache.open_path(out)


def test_align_aah_mirrors_flipped_samples() -> None:
    maps = tuple(torch.arange(2 * 3 * 4 * s, dtype=torch.float32).reshape(2, 3, 4, s) for s in (4, 2, 2))
    out = align_aah(maps, torch.tensor([True, False]))
    for m, o in zip(maps, out):
        assert torch.equal(o[0], m[0].flip(-1))
        assert torch.equal(o[1], m[1])
