"""Forward-only AAH (sangal.aah.fast): closed-form layer4 and the logit-map decomposition vs backward Grad-CAM."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

from sangal.train.distill import distill_loss, map_agreement
from sangal.aah.fast import (
    combine_logit_maps,
    fast_attribute_heatmaps,
    folded_heads,
    layer4_heatmaps,
    layer4_logit_maps,
)
from sangal.aah.gradcam import attribute_heatmaps, target_classes
from sangal.data.attributes import IGNORE_INDEX
from sangal.models.attribute_net import AttributeNet
from sangal.models.fast_map_net import FastMapNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MARKET_CLASSES = [2] * 9 + [4] + [2] * 17  # binary heads and the 4-class age
MERGED_LIKE = [3, 5, 2, 9]  # multi-class heads only
B, H, W = 3, 64, 32


BACKBONES = ["resnet18", "mobilenet_v2"]


def _net(classes: list[int], seed: int = 0, backbone: str = "resnet18") -> AttributeNet:
    """Attribute net (resnet18 by default) with non-trivial BatchNorm statistics and affine parameters in its heads."""
    torch.manual_seed(seed)
    net = AttributeNet(classes, backbone=backbone, pretrained=False)
    for head in net.heads:
        nn.init.normal_(head.fc.weight, std=0.05)
        nn.init.normal_(head.fc.bias, std=0.5)
        head.bn.running_mean.normal_(0.0, 0.1)
        head.bn.running_var.uniform_(0.5, 2.0)
        head.bn.weight.data.uniform_(0.5, 1.5)
        head.bn.bias.data.normal_(0.0, 0.1)
    return net.eval()


def _labels(classes: list[int], seed: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.stack([torch.randint(0, c, (B,), generator=g) for c in classes], dim=1)  # (B, K)
    t[0, 1] = IGNORE_INDEX
    return t


def _images(seed: int = 1) -> Tensor:
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _peak_relative_error(got: Tensor, want: Tensor) -> float:
    """max |got - want| per map, over the map's own peak (raw maps differ in scale by orders of magnitude)."""
    peak = want.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    return float(((got - want).abs() / peak).max())


def _backward_layer4_reference(net: AttributeNet, images: Tensor, targets: Tensor | None) -> Tensor:
    """Eqs. (1)-(2) at layer4 by plain autograd, one backward per attribute, in the net's dtype: (B, K, h, w) raw."""
    with torch.no_grad():
        a3 = net.stage2_to_3(net.forward_to_stage2(images))
    a4 = net.stage3_to_4(a3).detach().requires_grad_()
    logits = net.head_from_stage4(a4)
    classes = target_classes(logits, targets)  # (B, K)
    maps = []
    for k, z in enumerate(logits):
        y = torch.softmax(z, dim=1).gather(1, classes[:, k:k + 1]).sum()  # y^k of each sample (eq. 1)
        (grad,) = torch.autograd.grad(y, a4)
        weights = grad.mean(dim=(-2, -1), keepdim=True)  # (B, D, 1, 1)
        maps.append(torch.relu((weights * a4).sum(1)).detach())  # (B, h, w)
    return torch.stack(maps, dim=1)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("classes", [MARKET_CLASSES, MERGED_LIKE], ids=["binary+age", "multi-class"])
@pytest.mark.parametrize("guided", [False, True], ids=["predicted", "labels"])
def test_layer4_closed_form_equals_backward_grad_cam(classes, guided, backbone) -> None:
    targets = _labels(classes) if guided else None
    # float64: the closed form against one autograd backward per attribute, to 1e-5 of each map's peak.
    net, images = _net(classes, backbone=backbone).double(), _images().double()
    with torch.no_grad():
        a4 = net.forward_stages(images)[2]
        logits = net.head_from_stage4(a4)
    want = _backward_layer4_reference(net, images, targets)
    got = layer4_heatmaps(net, a4, logits, targets, normalize="none")
    assert got.shape == want.shape == (B, len(classes), 4, 2) and got.dtype == torch.float64
    assert float(want.amax()) > 0 and not got.requires_grad  # not a vacuous all-zero comparison
    assert _peak_relative_error(got, want) <= 1e-5
    torch.testing.assert_close(layer4_heatmaps(net, a4, logits, targets, normalize="max"),
                               want / want.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300), atol=1e-5, rtol=0)
    # float32: against sangal.aah.gradcam's vmapped backward. Both float32 paths sit up to ~3e-5 from the
    # float64 values on near-cancelling cells (the backward one included), hence 5e-5 here.
    net, images = _net(classes, backbone=backbone), _images()
    with torch.no_grad():
        a4 = net.forward_stages(images)[2]
        logits = net.head_from_stage4(a4)
    exact = attribute_heatmaps(net, images, targets, normalize="max")[2]
    torch.testing.assert_close(layer4_heatmaps(net, a4, logits, targets, normalize="max"), exact, atol=5e-5, rtol=0)


def test_folded_heads_reproduce_the_logits() -> None:
    net, images = _net(MARKET_CLASSES), _images()
    with torch.no_grad():
        a4 = net.forward_stages(images)[2]
        logits = torch.cat(net.head_from_stage4(a4), dim=1)  # (B, sum C)
        _, bias = folded_heads(net)
        per_position = layer4_logit_maps(net, a4)  # (B, sum C, h, w)
    torch.testing.assert_close(per_position.mean(dim=(-2, -1)) + bias, logits, atol=1e-5, rtol=1e-5)


def _exact_logit_maps(net: AttributeNet, images: Tensor) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps (before ReLU) of every logit at layer2 and layer3, by plain autograd: (B, sum C, h, w) each."""
    with torch.no_grad():
        a2 = net.forward_to_stage2(images)
    a2 = a2.requires_grad_()
    a3 = net.stage2_to_3(a2)
    logits = torch.cat(net.head_from_stage4(net.stage3_to_4(a3)), dim=1)  # (B, sum C)
    maps: list[list[Tensor]] = [[], []]
    for j in range(logits.shape[1]):
        grads = torch.autograd.grad(logits[:, j].sum(), (a2, a3), retain_graph=True)
        for s, (a, g) in enumerate(zip((a2, a3), grads)):
            maps[s].append((g.mean(dim=(-2, -1))[:, :, None, None] * a).sum(1).detach())  # (B, h, w)
    return torch.stack(maps[0], dim=1), torch.stack(maps[1], dim=1)


@functools.cache
def _reference_logit_maps(backbone: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`_exact_logit_maps` of ``_net(MARKET_CLASSES, backbone=backbone)`` on ``_images()`` in ``dtype``: one
    backward per logit (56), computed once per test run for the tests that compare against it. Read-only."""
    return _exact_logit_maps(_net(MARKET_CLASSES, backbone=backbone).to(dtype), _images().to(dtype))


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("guided", [False, True], ids=["predicted", "labels"])
def test_logit_map_decomposition_reproduces_layer2_and_layer3(guided, backbone) -> None:
    """The identity the predictor relies on: eq. (2) at any stage = ReLU(y_c (P_c - sum_j y_j P_j))."""
    classes = MARKET_CLASSES
    # random-init MobileNetV2 layer2/3 maps are ~1e-11, where float32 rounding reaches 1e-4 of their
    # peak: the identity is checked in float64 there
    dtype = torch.float64 if backbone == "mobilenet_v2" else torch.float32
    net, images = _net(classes, backbone=backbone).to(dtype), _images().to(dtype)
    targets = _labels(classes) if guided else None
    p2, p3 = _reference_logit_maps(backbone, dtype)  # of this net and these images
    with torch.no_grad():
        logits = net(images).logits
    probs = torch.cat([torch.softmax(z, dim=1) for z in logits], dim=1)
    chosen = target_classes(logits, targets)
    exact2, exact3, _ = attribute_heatmaps(net, images, targets, normalize="none")
    for p, exact in ((p2, exact2), (p3, exact3)):
        got = combine_logit_maps(p, probs, chosen, classes)
        assert float(exact.amax()) > 0
        assert _peak_relative_error(got, exact) <= 1e-4


class _ExactLogitPredictor(nn.Module):
    """A 'predictor' returning the true logit maps: fast_attribute_heatmaps must then equal exact Grad-CAM."""

    def __init__(self, maps: tuple[Tensor, Tensor]) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, a2: Tensor, a3: Tensor, z4: Tensor) -> tuple[Tensor, Tensor]:
        return self.maps


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fast_heatmaps_with_perfect_predictor_equal_exact_maps(backbone) -> None:
    net, images = _net(MARKET_CLASSES, backbone=backbone), _images()
    labels = _labels(MARKET_CLASSES)
    fast = fast_attribute_heatmaps(net, _ExactLogitPredictor(_reference_logit_maps(backbone, torch.float32)), images,
                                   labels)
    exact = attribute_heatmaps(net, images, labels, normalize="max")
    for f, e in zip(fast, exact):
        assert f.shape == e.shape
        torch.testing.assert_close(f, e, atol=1e-4, rtol=0)


def test_fast_class_agnostic_maps_with_perfect_predictor_equal_exact_ones() -> None:
    """|S| maps (sangal.aah.modes) from the forward pass: the same as from one signed backward pass."""
    from sangal.aah.modes import class_agnostic_heatmaps

    net, images = _net(MARKET_CLASSES), _images()
    perfect = _ExactLogitPredictor(_reference_logit_maps("resnet18", torch.float32))  # of this net and these images
    fast = fast_attribute_heatmaps(net, perfect, images, mode="agnostic")
    exact = class_agnostic_heatmaps(
        lambda t: attribute_heatmaps(net, images, t, normalize="none"), MARKET_CLASSES, images.shape[0], "cpu",
        signed_fn=lambda t: attribute_heatmaps(net, images, t, normalize="none", signed=True))
    for f, e in zip(fast, exact):
        torch.testing.assert_close(f, e, atol=1e-4, rtol=0)
    relu = fast_attribute_heatmaps(net, perfect, images)
    assert any(bool(((f - r).abs() > 1e-3).any()) for f, r in zip(fast, relu))  # not the ReLU maps


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fast_heatmaps_shapes_range_and_refusals(backbone) -> None:
    net, images = _net(MARKET_CLASSES, backbone=backbone), _images()
    predictor = FastMapNet(net.backbone.channels[1:3], sum(MARKET_CLASSES), hidden=8).eval()
    maps = fast_attribute_heatmaps(net, predictor, images)
    assert [tuple(m.shape) for m in maps] == [(B, 27, 8, 4), (B, 27, 4, 2), (B, 27, 4, 2)]
    for m in maps:
        assert not m.requires_grad and float(m.min()) >= 0 and float(m.max()) <= 1 + 1e-6
    with pytest.raises(ValueError, match="up to scale"):
        fast_attribute_heatmaps(net, predictor, images, normalize="none")
    with pytest.raises(ValueError, match="eval mode"):
        fast_attribute_heatmaps(net.train(), predictor, images)


def test_map_agreement_by_hand() -> None:
    exact = torch.zeros(2, 1, 2, 2)
    exact[0, 0, 0, 0], exact[0, 0, 1, 1] = 1.0, 0.5  # peak at cell (0, 0)
    exact[1, 0, 1, 0] = 1.0  # peak at cell (1, 0)
    pred = exact.clone()
    pred[1, 0] = torch.tensor([[0.0, 1.0], [0.2, 0.0]])  # peak moved to (0, 1)
    got = map_agreement(pred, exact)
    assert got["argmax"] == pytest.approx(0.5)
    r1 = torch.corrcoef(torch.stack([pred[1].flatten(), exact[1].flatten()]))[0, 1]
    assert got["pearson"] == pytest.approx((1.0 + float(r1)) / 2, abs=1e-6)


def test_distill_loss_is_zero_for_a_perfect_prediction_and_pushes_dead_maps_up() -> None:
    exact = torch.rand(2, 3, 4, 2)
    exact = exact / exact.amax(dim=(-2, -1), keepdim=True)
    assert float(distill_loss(exact * 5.0, exact)) == pytest.approx(0.0, abs=1e-10)  # scale-free
    dead = (-exact).requires_grad_()  # all-negative prediction: its ReLU is zero everywhere
    distill_loss(dead, exact).backward()
    assert dead.grad is not None and float(dead.grad.min()) < 0  # descent raises the map where exact > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_maps_on_cuda_match_cpu_and_exact_layer4() -> None:
    net, images, labels = _net(MARKET_CLASSES), _images(), _labels(MARKET_CLASSES)
    predictor = FastMapNet((128, 256), sum(MARKET_CLASSES), hidden=8).eval()
    cpu = fast_attribute_heatmaps(net, predictor, images, labels)
    gpu_net, gpu_predictor = _net(MARKET_CLASSES).cuda(), predictor.cuda()
    gpu = fast_attribute_heatmaps(gpu_net, gpu_predictor, images.cuda(), labels.cuda())
    for c, g in zip(cpu, gpu):
        assert g.is_cuda and g.dtype == torch.float32
        torch.testing.assert_close(g.cpu(), c, atol=5e-3, rtol=0)  # cuDNN convolutions may use TF32
    exact4 = attribute_heatmaps(gpu_net, images.cuda(), labels.cuda())[2]  # same device, same activations
    torch.testing.assert_close(gpu[2], exact4, atol=1e-4, rtol=0)
