"""Feature extraction: flip averaging, normalisation, shapes, heat maps actually used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sangal.aah.gradcam import attribute_heatmaps
from sangal.data.dataset import ImageDataset
from sangal.data.records import ImageRecord
from sangal.data.transforms import build_transforms
from sangal.evaluate.features import FeatureSet, aah_from_cache, aah_from_net, extract_features
from sangal.models.attribute_net import AttributeNet
from sangal.models.reid_net import ReIDNet

H, W, N, K = 64, 32, 5, 2


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> DataLoader:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    records = []
    for i in range(N):
        path = folder / f"{i:04d}_c{i % 2 + 1}s1_000001_01.jpg"
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path=path, pid=10 + i, camid=i % 2, raw_pid=10 + i))
    return DataLoader(ImageDataset(records, build_transforms(H, W, train=False)), batch_size=3)


@pytest.fixture(scope="module")
def sangal_net() -> ReIDNet:
    torch.manual_seed(0)
    return ReIDNet(4, [2, 3], mode="san-gal", backbone="resnet18", pretrained=False).eval()


def _maps(batch: dict) -> tuple[torch.Tensor, ...]:
    """Deterministic, left-right asymmetric maps per image index: (B, K, h, w) at 3 stages."""
    idx = torch.as_tensor(batch["index"]).float()[:, None, None, None]
    out = []
    for h, w in ((8, 4), (4, 2), (4, 2)):
        ramp = torch.linspace(0, 1, w).expand(K, h, w)[None]  # rises left -> right
        out.append((ramp * (1 + idx) / N).clamp(0, 1))
    return tuple(out)


def test_flip_average_equals_manual_mean(loader: DataLoader, sangal_net: ReIDNet) -> None:
    fs = extract_features(sangal_net, loader, flip=True, aah_fn=_maps, normalize=False, progress=False)
    batch = next(iter(loader))
    maps = _maps(batch)
    with torch.no_grad():
        a = sangal_net(batch["image"], maps)
        b = sangal_net(batch["image"].flip(-1), tuple(m.flip(-1) for m in maps))
    expected = (a.features + b.features) / 2
    np.testing.assert_allclose(fs.feats[:3], expected.numpy(), rtol=1e-5, atol=1e-6)
    for k, probs in enumerate(fs.attr_probs):
        manual = (torch.softmax(a.attr_logits[k], 1) + torch.softmax(b.attr_logits[k], 1)) / 2
        np.testing.assert_allclose(probs[:3], manual.numpy(), rtol=1e-5, atol=1e-6)
    # not the same as the unflipped features alone
    assert not np.allclose(fs.feats[:3], a.features.numpy(), atol=1e-4)


def test_normalisation_and_shapes(loader: DataLoader, sangal_net: ReIDNet) -> None:
    raw = extract_features(sangal_net, loader, aah_fn=_maps, normalize=False, progress=False)
    fs = extract_features(sangal_net, loader, aah_fn=_maps, progress=False)
    assert isinstance(fs, FeatureSet) and len(fs) == N
    assert fs.feats.shape == (N, 512) and fs.feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fs.feats, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(fs.feats, raw.feats / np.linalg.norm(raw.feats, axis=1, keepdims=True), rtol=1e-5,
                               atol=1e-6)
    assert fs.pids.tolist() == [10, 11, 12, 13, 14] and fs.camids.tolist() == [0, 1, 0, 1, 0]
    assert [Path(p).name for p in fs.paths] == [Path(r.path).name for r in loader.dataset.records]
    assert [p.shape for p in fs.attr_probs] == [(N, 2), (N, 3)]
    np.testing.assert_allclose(fs.attr_probs[1].sum(axis=1), 1.0, rtol=1e-5)
    assert not sangal_net.training


def test_heat_maps_change_the_features(loader: DataLoader, sangal_net: ReIDNet) -> None:
    zeros = extract_features(sangal_net, loader, aah_fn=lambda b: tuple(torch.zeros_like(m) for m in _maps(b)),
                             progress=False)
    used = extract_features(sangal_net, loader, aah_fn=_maps, progress=False)
    assert not np.allclose(zeros.feats, used.feats, atol=1e-4)
    with pytest.raises(ValueError, match="needs heat maps"):
        extract_features(sangal_net, loader, progress=False)


def test_id_mode_has_no_attribute_probs(loader: DataLoader) -> None:
    torch.manual_seed(0)
    net = ReIDNet(4, None, mode="id", backbone="resnet18", pretrained=False).train()
    fs = extract_features(net, loader, flip=False, progress=False)
    assert fs.attr_probs is None and fs.feats.shape == (N, 512)
    assert net.training  # mode restored
    with pytest.raises(ValueError, match="does not use heat maps"):
        extract_features(net, loader, aah_fn=_maps, progress=False)


def test_aah_from_cache_reads_batch_indices() -> None:
    class FakeCache:
        def get(self, indices):
            idx = torch.as_tensor(indices).float()
            return tuple(idx[:, None, None, None].expand(-1, K, 2, 2) for _ in range(3))

    maps = aah_from_cache(FakeCache())({"index": torch.tensor([4, 1])})
    assert [float(m[0, 0, 0, 0]) for m in maps] == [4.0] * 3 and float(maps[1][1].max()) == 1.0


def test_aah_from_net_uses_predicted_classes(loader: DataLoader) -> None:
    torch.manual_seed(1)
    attr_net = AttributeNet([2, 3], backbone="resnet18", pretrained=False).train()
    fn = aah_from_net(attr_net)
    assert not attr_net.training
    batch = next(iter(loader))
    with torch.no_grad():  # as inside extract_features
        got = fn(batch)
    expected = attribute_heatmaps(attr_net, batch["image"])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
        assert g.shape[:2] == (3, K)
