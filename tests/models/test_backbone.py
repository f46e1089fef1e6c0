"""Staged backbones (ResNet, MobileNetV2): stage shapes, last stride, local weights, clear errors (no downloads)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from sangal.errors import ConfigError, WeightsError
from sangal.models import backbone as backbone_module
from sangal.models.backbone import ResNetBackbone, build_backbone

CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}


@pytest.mark.parametrize("name", list(CHANNELS))
def test_stage_shapes_both_last_strides(name):
    h, w = (32, 16) if name == "resnet101" else (64, 32)
    x = torch.randn(1, 3, h, w)
    for last_stride in (1, 2):
        net = build_backbone(name, pretrained=False, last_stride=last_stride).eval()
        assert isinstance(net, ResNetBackbone)
        assert net.channels == CHANNELS[name]
        assert not any(k.startswith("fc.") for k in net.state_dict())
        with torch.no_grad():
            stages = net(x)
        scales = (4, 8, 16, 16 * last_stride)
        expected = [(1, c, -(-h // s), -(-w // s)) for c, s in zip(CHANNELS[name], scales)]  # ceil
        assert [tuple(t.shape) for t in stages] == expected


def test_stem_and_forward_stages_agree():
    torch.manual_seed(0)
    net = build_backbone("resnet18", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        a1 = net.layer1(net.stem(x))
        assert torch.equal(a1, net.forward_stages(x)[0])
    assert net.stem[0] is net.conv1 and net.stem[1] is net.bn1
    assert "conv1.weight" in net.state_dict()  # torchvision parameter names are kept


def _reference_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


def _assert_loaded(net: ResNetBackbone, state: dict[str, torch.Tensor]) -> None:
    loaded = net.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(loaded[key], value), key


def test_local_safetensors_round_trip(tmp_path):
    state = _reference_resnet18_state()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    net = build_backbone("resnet18", pretrained=path)
    _assert_loaded(net, state)
    # a fresh random backbone differs, so the comparison above is meaningful
    other = build_backbone("resnet18", pretrained=False)
    assert not torch.equal(other.state_dict()["conv1.weight"], state["conv1.weight"])


def test_local_pth_round_trip_with_prefix_and_str_path(tmp_path):
    state = _reference_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    net = build_backbone("resnet18", pretrained=str(path), last_stride=1)
    _assert_loaded(net, state)
    assert net.layer4[0].conv1.stride == (1, 1)


def test_backbone_prefix_from_a_saved_backbone(tmp_path):
    source = build_backbone("resnet18", pretrained=False)
    path = tmp_path / "attr_backbone.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    net = build_backbone("resnet18", pretrained=path)
    _assert_loaded(net, source.state_dict())


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError, match="nope.safetensors does not exist"):
        build_backbone("resnet18", pretrained=path)


def test_wrong_architecture_names_file_and_keys(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError) as info:
        build_backbone("resnet18", pretrained=path)
    message = str(info.value)
    assert "resnet50.safetensors" in message and "resnet18" in message
    assert "unexpected keys" in message and "shape mismatches" in message
    assert "\n" not in message


def test_missing_keys_reported(tmp_path):
    state = _reference_resnet18_state()
    del state["layer3.1.bn2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"partial\.pth.*1 missing keys \(layer3\.1\.bn2\.weight\)"):
        build_backbone("resnet18", pretrained=path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file .*garbage.pth"):
        build_backbone("resnet18", pretrained=path)
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x00\x01")
    with pytest.raises(WeightsError, match="garbage.safetensors"):
        build_backbone("resnet18", pretrained=bad_st)


def test_offline_download_gives_clear_error(monkeypatch):
    calls = []

    def offline(self, *args, **kwargs):
        calls.append(kwargs)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError) as info:
        build_backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert calls, "the torchvision weights API was not used"
    assert "resnet18" in message and "name resolution" in message
    assert "model.pretrained=/path/resnet18.safetensors" in message
    assert "model.pretrained=false" in message
    assert "\n" not in message


def test_download_path_loads_returned_state(monkeypatch):
    state = _reference_resnet18_state()
    seen_timeouts = []

    def fake_get_state_dict(self, *args, **kwargs):
        import socket

        seen_timeouts.append(socket.getdefaulttimeout())
        return state

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    net = build_backbone("resnet18", pretrained=True)
    _assert_loaded(net, state)
    assert seen_timeouts == [backbone_module.DOWNLOAD_TIMEOUT_S]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="valid: resnet18, resnet34, resnet50, resnet101"):
        build_backbone("vgg16", pretrained=False)
    with pytest.raises(ConfigError, match="last_stride"):
        build_backbone("resnet18", pretrained=False, last_stride=3)


def test_mobilenet_v2_stages_cut_points_and_torchvision_keys():
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(weights=None)
    for last_stride in (1, 2):
        net = build_backbone("mobilenet_v2", pretrained=False, last_stride=last_stride).eval()
        assert net.channels == (24, 32, 96, 1280)
        assert net.strides == (4, 8, 16, 16 * last_stride)
        with torch.no_grad():
            shapes = [tuple(t.shape) for t in net(torch.randn(1, 3, 64, 32))]
        assert shapes == [(1, 24, 16, 8), (1, 32, 8, 4), (1, 96, 4, 2), (1, 1280, 4 // last_stride, 2 // last_stride)]
    features = net.features
    assert list(net.stem) == [features[0]]
    assert [list(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)] == [
        list(features[1:4]), list(features[4:7]), list(features[7:14]), list(features[14:19])]
    # torchvision's names, classifier dropped, stage views add no key
    assert list(net.state_dict()) == [k for k in reference.state_dict() if not k.startswith("classifier.")]
    assert net.dropped == ("classifier",)


def test_mobilenet_v2_last_stride_1_unstrides_only_the_depthwise_conv_of_block_14():
    strided = build_backbone("mobilenet_v2", pretrained=False, last_stride=2)
    flat = build_backbone("mobilenet_v2", pretrained=False, last_stride=1)
    changed = [name for (name, a), (_, b) in zip(strided.named_modules(), flat.named_modules())
               if isinstance(a, torch.nn.Conv2d) and a.stride != b.stride]
    assert changed == ["features.14.conv.1.0"]
    assert flat.features[14].conv[1][0].stride == (1, 1)
    assert flat.features[7].conv[1][0].stride == (2, 2)  # layer3's downsampling is untouched


def test_a_torchvision_mobilenet_v2_state_dict_loads_as_is(tmp_path):
    torch.manual_seed(5)
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()  # with classifier.* keys
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(state, path)
    net = build_backbone("mobilenet_v2", pretrained=path)
    _assert_loaded(net, {k: v for k, v in state.items() if not k.startswith("classifier.")})


def test_stage_views_run_the_registered_modules_so_hooks_fire():
    net = build_backbone("mobilenet_v2", pretrained=False).eval()
    seen = []
    net.layer4.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 32))
    assert seen == [(1, 1280, 4, 2)]
    copy = __import__("copy").deepcopy(net)
    assert copy.layer2[0] is copy.features[4] and copy.layer2[0] is not net.features[4]


def test_table_and_config_choices_agree():
    from sangal.choices import BACKBONES

    assert tuple(backbone_module.BACKBONES) == BACKBONES


def test_stage_views_follow_a_swapped_module():
    """SyncBatchNorm conversion (DDP on CUDA) replaces BatchNorm modules in the tree: the views run the new ones."""
    net = build_backbone("mobilenet_v2", pretrained=False)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(converted.layer2[0].conv[0][1], torch.nn.SyncBatchNorm)
    resnet = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_backbone("resnet18", pretrained=False))
    assert isinstance(resnet.stem[1], torch.nn.SyncBatchNorm) and resnet.stem[1] is resnet.bn1
    calls = []
    net.features[5] = torch.nn.Identity()
    net.features[5].register_forward_hook(lambda module, inputs, output: calls.append(1))
    net.eval()(torch.randn(1, 3, 64, 32))
    assert calls == [1]
