"""A new torchvision family is one entry of BACKBONES away: EfficientNet-B0 added here, nothing else changed.

The entry is monkeypatched into the table (random init); the attribute net, the
Re-ID net in san-gal mode, exact Grad-CAM, the closed-form layer4 maps, the map
predictor and checkpoints must then all work on it.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from sangal.store.checkpoint import load_model, save_checkpoint
from sangal.aah.gradcam import attribute_heatmaps
from sangal.aah.fast import fast_attribute_heatmaps, layer4_heatmaps
from sangal.models import backbone as backbone_module
from sangal.models.attribute_net import AttributeNet
from sangal.models.backbone import BackboneSpec, sequential_cuts
from sangal.models.fast_map_net import FastMapNet
from sangal.models.reid_net import ReIDNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = [2] * 9 + [4] + [2] * 17  # K = 27: EfficientNet-B0's layer2 (40 ch) is narrower than 2K
H, W = 64, 32
# torchvision efficientnet_b0.features: [0] stem conv s2, [1] MBConv s2 16ch, [2] s4 24ch, [3] s8 40ch,
# [4] s16 80ch, [5] s16 112ch, [6] s32 192ch, [7] s32 320ch, [8] 1x1 conv 1280ch
EFFICIENTNET_B0 = BackboneSpec(torchvision.models.efficientnet_b0,
                               torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1,
                               sequential_cuts("features", 2, 3, 4, 6, 9))


@pytest.fixture(autouse=True)
def efficientnet_entry(monkeypatch) -> None:
    monkeypatch.setitem(backbone_module.BACKBONES, "efficientnet_b0", EFFICIENTNET_B0)


def _attr_net() -> AttributeNet:
    """Random EfficientNet-B0 attribute net with BatchNorm statistics of real batches.

    With the initial statistics (mean 0, var 1) eval-mode activations shrink block after
    block (layer4 ~1e-13): every image gets the same tied softmax, a degenerate test case.
    """
    torch.manual_seed(0)
    net = AttributeNet(CLASSES, backbone="efficientnet_b0", pretrained=False)
    for head in net.heads:  # predictions that vary between images; logits of a few units, far from
        nn.init.normal_(head.fc.weight, std=0.002)  # saturation, where float32 softmax gradients lose digits
    for m in net.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # one pass sets the exact batch statistics
    with torch.no_grad():
        net.backbone.train()(torch.randn(8, 3, H, W, generator=torch.Generator().manual_seed(9)))
    return net.eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))


def test_stages_follow_the_cut_points() -> None:
    net = _attr_net()
    assert net.backbone.channels == (24, 40, 112, 1280) and net.backbone.strides == (4, 8, 16, 16)
    assert net.backbone.dropped == ("avgpool", "classifier")
    with torch.no_grad():
        out = net(_images())
    assert [tuple(a.shape) for a in out.stages] == [(2, 40, 8, 4), (2, 112, 4, 2), (2, 1280, 4, 2)]
    assert not any(k.startswith("backbone.layer") for k in net.state_dict())  # torchvision names only


def test_reid_net_san_gal_trains_and_evaluates() -> None:
    torch.manual_seed(0)
    net = ReIDNet(5, CLASSES, mode="san-gal", backbone="efficientnet_b0", pretrained=False).train()
    maps = [torch.rand(4, 27, h, w) for h, w in ((8, 4), (4, 2), (4, 2))]
    out = net(torch.randn(4, 3, H, W), maps)
    (out.logits.logsumexp(1).sum() + sum(z.sum() for z in out.attr_logits)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, H, W), [m[:2] for m in maps]).features.shape == (2, 1280)


def test_exact_grad_cam_layer4_equals_the_closed_form() -> None:
    net, images = _attr_net(), _images()
    exact = attribute_heatmaps(net, images, normalize="max")
    assert [tuple(m.shape) for m in exact] == [(2, 27, 8, 4), (2, 27, 4, 2), (2, 27, 4, 2)]
    assert all(bool((m > 0).any()) for m in exact)
    with torch.no_grad():
        a4 = net.forward_stages(images)[2]
        closed = layer4_heatmaps(net, a4, net.head_from_stage4(a4), normalize="max")
    torch.testing.assert_close(closed, exact[2], atol=5e-5, rtol=0)


def test_map_predictor_gives_fast_maps() -> None:
    net = _attr_net()
    predictor = FastMapNet(net.backbone.channels[1:3], sum(CLASSES), hidden=8).eval()
    maps = fast_attribute_heatmaps(net, predictor, _images())
    assert [tuple(m.shape) for m in maps] == [(2, 27, 8, 4), (2, 27, 4, 2), (2, 27, 4, 2)]
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 + 1e-6 for m in maps)


def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path) -> None:
    net = _attr_net()
    extra = {"dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}
    directory = save_checkpoint(tmp_path / "attr", net, {**net.arch_dict(), **extra}, {})
    loaded, ckpt = load_model(directory, expected_kind="attribute")
    assert ckpt.arch["backbone"] == "efficientnet_b0"
    images = _images()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images).features, net(images).features)
