"""The one test-time path: flip averaging, normalisation, the maps it makes and uses, one image or a loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sangal.aah.gradcam import attribute_heatmaps
from sangal.aah.modes import exact_agnostic_heatmaps
from sangal.aah.spec import MapSpec
from sangal.data.dataset import ImageDataset, read_image
from sangal.data.records import ImageRecord
from sangal.data.transforms import build_transforms
from sangal.errors import ConfigError
from sangal.evaluate.embedding import EmbedSpec
from sangal.evaluate.features import FeatureSet
from sangal.evaluate.predictor import Predictor
from sangal.models.attribute_net import AttributeNet
from sangal.models.reid_net import ReIDNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")
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
def nets() -> tuple[ReIDNet, AttributeNet]:
    torch.manual_seed(0)
    attr = AttributeNet([2, 3], backbone="resnet18", pretrained=False).eval()
    for head in attr.heads:  # predictions that vary between images
        torch.nn.init.normal_(head.fc.weight, std=0.05)
    return ReIDNet(4, [2, 3], mode="san-gal", backbone="resnet18", pretrained=False).eval(), attr


def _record(flip: bool = True, spec: MapSpec | None = None) -> EmbedSpec:
    return EmbedSpec(spec or MapSpec(), flip, H, W)


def _predictor(nets, flip: bool = True, spec: MapSpec | None = None) -> Predictor:
    return Predictor(nets[0], _record(flip, spec), nets[1])


def _maps(batch: dict) -> tuple[torch.Tensor, ...]:
    """Deterministic, left-right asymmetric maps per image index: (B, K, h, w) at 3 stages."""
    idx = torch.as_tensor(batch["index"]).float()[:, None, None, None]
    out = []
    for h, w in ((8, 4), (4, 2), (4, 2)):
        ramp = torch.linspace(0, 1, w).expand(K, h, w)[None]  # rises left -> right
        out.append((ramp * (1 + idx) / N).clamp(0, 1))
    return tuple(out)


def test_flip_average_equals_manual_mean(loader, nets) -> None:
    fs = _predictor(nets).embed_loader(loader, _maps, progress=False)
    batch = next(iter(loader))
    maps = _maps(batch)
    with torch.no_grad():
        a = nets[0](batch["image"], maps)
        b = nets[0](batch["image"].flip(-1), tuple(m.flip(-1) for m in maps))
    expected = torch.nn.functional.normalize((a.features + b.features) / 2)
    np.testing.assert_allclose(fs.feats[:3], expected.numpy(), rtol=1e-5, atol=1e-6)
    for k, probs in enumerate(fs.attr_probs):
        manual = (torch.softmax(a.attr_logits[k], 1) + torch.softmax(b.attr_logits[k], 1)) / 2
        np.testing.assert_allclose(probs[:3], manual.numpy(), rtol=1e-5, atol=1e-6)
    unflipped = _predictor(nets, flip=False).embed_loader(loader, _maps, progress=False)
    assert not np.allclose(fs.feats, unflipped.feats, atol=1e-4)


def test_features_are_unit_norm_and_rows_follow_the_loader(loader, nets) -> None:
    fs = _predictor(nets).embed_loader(loader, _maps, progress=False)
    assert isinstance(fs, FeatureSet) and len(fs) == N
    assert fs.feats.shape == (N, 512) and fs.feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fs.feats, axis=1), 1.0, rtol=1e-5)
    assert fs.pids.tolist() == [10, 11, 12, 13, 14] and fs.camids.tolist() == [0, 1, 0, 1, 0]
    assert [Path(p).name for p in fs.paths] == [Path(r.path).name for r in loader.dataset.records]
    assert [p.shape for p in fs.attr_probs] == [(N, 2), (N, 3)]


def test_the_maps_it_makes_are_the_ones_it_uses(loader, nets) -> None:
    predictor = _predictor(nets, spec=MapSpec("labels"))  # MapSpec() is the config's: agnostic maps
    batch = next(iter(loader))
    made = predictor.embed(batch["image"])
    expected = attribute_heatmaps(nets[1], batch["image"])  # test time: predicted classes, exact
    for got, want in zip(made.maps, expected):
        torch.testing.assert_close(got, want)
    given = predictor.embed(batch["image"], expected)
    torch.testing.assert_close(made.features, given.features)
    zeros = predictor.embed(batch["image"], tuple(torch.zeros_like(m) for m in expected))
    assert not torch.allclose(zeros.features, made.features, atol=1e-4)


def test_agnostic_models_get_agnostic_maps_at_test_time(loader, nets) -> None:
    images = next(iter(loader))["image"]
    got = _predictor(nets, spec=MapSpec(targets="agnostic")).maps(images)
    for g, e in zip(got, exact_agnostic_heatmaps(nets[1], images)):
        torch.testing.assert_close(g, e)


def test_one_image_embeds_as_in_a_loader(loader, nets) -> None:
    predictor = _predictor(nets)
    fs = predictor.embed_paths([r.path for r in loader.dataset.records], batch_size=2)
    single = predictor.embed_image(read_image(loader.dataset.records[3].path))
    np.testing.assert_allclose(single.features[0].numpy(), fs.feats[3], atol=1e-6)


def test_id_models_predict_no_attributes_and_need_no_maps(loader) -> None:
    torch.manual_seed(0)
    net = ReIDNet(4, None, mode="id", backbone="resnet18", pretrained=False)
    fs = Predictor(net, _record(flip=False)).embed_loader(loader, progress=False)
    assert fs.attr_probs is None and fs.feats.shape == (N, 512)


@pytest.mark.parametrize("mode", ["id", "id+attr", "san-gal"])
def test_only_san_gal_models_compute_heat_maps(loader, nets, monkeypatch, mode) -> None:
    """id and id+attr use no maps, so an attribute net beside them makes none and runs once per batch (its
    attributes); a san-gal model makes its maps once per batch (the mirror reuses them mirrored)."""
    from sangal.evaluate import predictor as module

    calls = {"maps": 0, "attr_net": 0}
    make = module.attribute_maps

    def counted(*args, **kwargs):
        calls["maps"] += 1
        return make(*args, **kwargs)

    monkeypatch.setattr(module, "attribute_maps", counted)
    # every pass through the attribute net (its attributes or a Grad-CAM) ends in its heads
    hook = nets[1].heads[0].register_forward_pre_hook(lambda *_: calls.__setitem__("attr_net", calls["attr_net"] + 1))
    torch.manual_seed(0)
    reid = nets[0] if mode == "san-gal" else ReIDNet(4, [2, 3] if mode == "id+attr" else None, mode=mode,
                                                     backbone="resnet18", pretrained=False)
    try:
        e = Predictor(reid, _record(flip=True), nets[1]).embed(next(iter(loader))["image"])
    finally:
        hook.remove()
    if mode == "san-gal":
        assert calls["maps"] == 1 and e.maps is not None
    else:
        assert calls == {"maps": 0, "attr_net": 0 if mode == "id+attr" else 1} and e.maps is None
        assert e.attr_probs is not None  # the Re-ID heads (id+attr) or the attribute net (id) still predict


def test_a_san_gal_predictor_needs_its_attribute_net_and_fast_maps_their_predictor(nets) -> None:
    with pytest.raises(ConfigError, match="needs the attribute net"):
        Predictor(nets[0], _record())
    with pytest.raises(ConfigError, match="distilled map predictor"):
        Predictor(nets[0], _record(spec=MapSpec(method="fast")), nets[1])
