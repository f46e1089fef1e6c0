"""Loading a checkpoint without random initialisation (store.skeleton through store.checkpoint.load_model): the
loaded net equals the saved one bit for bit for every kind the project saves, the global RNG is left alone,
and the old refusals still hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sangal.errors import CheckpointError
from sangal.store import checkpoint as ck
from sangal.store.skeleton import assign_weights, build_skeleton, check_materialised

BASE = {"kind": "reid", "backbone": "resnet18", "last_stride": 1, "num_ids": 5, "attr_classes": [2, 3],
        "extra_sigmoid": False, "dataset": "market1501", "colour_mode": "binary", "height": 64, "width": 32}
ARCHES = {
    "attribute": {**BASE, "kind": "attribute", "num_ids": 0},
    "reid-id": {**BASE, "mode": "id", "attr_classes": []},
    "reid-id+attr": {**BASE, "mode": "id+attr"},
    "reid-san-gal": {**BASE, "mode": "san-gal"},
    "reid-san-gal-gated": {**BASE, "mode": "san-gal", "asam_form": "gated"},
    "reid-san-gal-mixed": {**BASE, "mode": "san-gal", "asam_form": "mixed", "asam_stages": [3, 4]},
    "reid-attr_pool": {**BASE, "mode": "san-gal", "attr_pool": True},
    "reid-mobilenet_v2": {**BASE, "mode": "id+attr", "backbone": "mobilenet_v2"},
    "map_predictor": {"kind": "map_predictor", "stage_channels": [128, 256], "num_logits": 5, "hidden": 4},
}


def _trained(arch: dict) -> nn.Module:
    """The net ``arch`` describes with every tensor moved off its initial value (BN statistics, zero gates)."""
    torch.manual_seed(0)
    model = ck.build_model(arch)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean") or name.startswith("asam."):
                tensor.add_(0.1 * torch.randn_like(tensor))
            elif name.endswith("running_var"):
                tensor.mul_(0.5 + torch.rand_like(tensor))
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
    return model.eval()


@pytest.mark.parametrize("name", list(ARCHES))
def test_a_loaded_net_is_the_saved_one_bit_for_bit_and_leaves_the_rng_alone(tmp_path: Path, name: str) -> None:
    saved = _trained(ARCHES[name])
    path = ck.save_checkpoint(tmp_path / "ckpt", saved, ARCHES[name], {})
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loaded, _ = ck.load_model(path)
    assert torch.equal(torch.get_rng_state(), before)  # the old load drew a whole random initialisation
    assert type(loaded) is type(saved) and not loaded.training
    want, got = saved.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].device.type == "cpu" and got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key
    assert [(n, p.requires_grad) for n, p in loaded.named_parameters()] == \
           [(n, p.requires_grad) for n, p in saved.named_parameters()]  # the BN neck's frozen bias stays frozen
    if name.startswith("reid"):
        x = torch.randn(2, 3, 64, 32)
        maps = [torch.rand(2, 2, h, w) for h, w in ((8, 4), (4, 2), (4, 2))] if saved.mode == "san-gal" else None
        with torch.no_grad():
            assert torch.equal(loaded(x, maps).features, saved(x, maps).features)


def test_a_state_dict_that_does_not_fit_is_refused_as_before(tmp_path: Path) -> None:
    smaller = ck.build_model(ARCHES["reid-id"])
    path = ck.save_checkpoint(tmp_path / "ckpt", smaller, ARCHES["reid-id+attr"], {})  # lacks the attribute heads
    with pytest.raises(CheckpointError, match=r"model\.safetensors do not fit the model: 14 missing keys "
                                              r"\(attr_heads\.0\.0\.weight, .*, \.\.\.\)$"):
        ck.load_model(path)
    wider = ck.save_checkpoint(tmp_path / "wider", smaller, {**ARCHES["reid-id"], "num_ids": 6}, {})
    with pytest.raises(CheckpointError, match=r"1 shape-mismatched keys \(classifier\.weight \(5, 512\) vs "
                                              r"\(6, 512\)\)"):
        ck.load_model(wider)


class _Tied(nn.Module):
    """Two layers sharing one weight, and a buffer the constructor computes and no file holds."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("scale", torch.arange(4.0), persistent=False)


def test_tied_weights_stay_tied_and_unsaved_buffers_are_built(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    saved = _Tied()
    path = ck.save_checkpoint(tmp_path / "ckpt", saved, {"kind": "map_predictor"}, {})
    monkeypatch.setattr(ck, "build_model", lambda arch, pretrained=False: _Tied())
    before = torch.get_rng_state()
    loaded, _ = ck.load_model(path)
    assert torch.equal(torch.get_rng_state(), before)  # the real build ran under a forked RNG
    assert loaded.b.weight is loaded.a.weight and torch.equal(loaded.a.weight, saved.a.weight)
    assert torch.equal(loaded.scale, torch.arange(4.0))
    skeleton = build_skeleton(_Tied)
    assign_weights(skeleton, saved.state_dict())
    assert skeleton.b.weight is skeleton.a.weight and torch.equal(skeleton.b.bias, saved.b.bias)
    with pytest.raises(CheckpointError, match=r"^ckpt left 1 tensors of the model unloaded on the meta device "
                                              r"\(scale\)$"):
        check_materialised(skeleton, "ckpt")


def test_loading_a_fast_map_net_leaves_the_rng_alone(tmp_path: Path) -> None:
    from sangal.aah.fast_map_files import load_fast_map_net, save_fast_map_net

    attr = _trained(ARCHES["attribute"])
    directory = ck.save_checkpoint(tmp_path / "attr", attr, ARCHES["attribute"], {})
    saved = _trained(ARCHES["map_predictor"])
    save_fast_map_net(directory, saved, {})
    before = torch.get_rng_state()
    loaded = load_fast_map_net(directory)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(loaded.state_dict()[k], t) for k, t in saved.state_dict().items())
