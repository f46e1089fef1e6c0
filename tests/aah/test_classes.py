"""Every class's map in one pass (sangal.aah.classes): each class choice equals its own Grad-CAM pass."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sangal.aah.classes import class_maps, draw_classes, fast_class_maps, maps_for_mode
from sangal.aah.gradcam import attribute_heatmaps, normalize_heatmaps
from sangal.aah.modes import exact_agnostic_heatmaps
from sangal.models.attribute_net import AttributeNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = [2, 4, 2, 3]  # two-class heads and larger ones
B, H, W = 3, 64, 32


def _net() -> AttributeNet:
    torch.manual_seed(0)
    net = AttributeNet(CLASSES, backbone="resnet18", pretrained=False)
    for head in net.heads:  # predictions that differ between images and classes
        nn.init.normal_(head.fc.weight, std=0.05)
        nn.init.normal_(head.fc.bias, std=0.5)
    return net.eval()


@pytest.fixture(scope="module")
def setting():
    net = _net()
    images = torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(1))
    return net, images, class_maps(net, images)


def _close(got: tuple[Tensor, ...], want: tuple[Tensor, ...]) -> None:
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=2e-4, rtol=0)


def test_a_chosen_class_equals_its_own_grad_cam_pass(setting) -> None:
    net, images, cm = setting
    labels = torch.tensor([[0, 3, 1, 2], [1, 0, 0, 1], [1, 2, 1, 0]])
    _close(maps_for_mode(cm, "select", labels), attribute_heatmaps(net, images, labels))
    _close(maps_for_mode(cm, "select", cm.predicted()), attribute_heatmaps(net, images))


def test_agnostic_maps_equal_the_signed_pass(setting) -> None:
    net, images, cm = setting
    _close(maps_for_mode(cm, "agnostic"), exact_agnostic_heatmaps(net, images))


def test_soft_maps_weight_each_class_by_its_probability(setting) -> None:
    net, images, cm = setting
    with torch.no_grad():
        probs, _ = net.predict(images)
    total = [0, 0, 0]
    for c in range(max(CLASSES)):
        targets = torch.tensor([[min(c, size - 1) for size in CLASSES]] * B)
        maps = attribute_heatmaps(net, images, targets, normalize="none")
        weight = torch.stack([p[:, min(c, p.shape[1] - 1)] * (c < p.shape[1]) for p in probs], dim=1)  # (B, K)
        total = [t + m * weight[:, :, None, None] for t, m in zip(total, maps)]
    _close(maps_for_mode(cm, "soft"), tuple(normalize_heatmaps(t, "max") for t in total))
    predicted = maps_for_mode(cm, "select", cm.predicted())
    assert any(not torch.allclose(s, p, atol=1e-3) for s, p in zip(maps_for_mode(cm, "soft"), predicted))


def test_the_forward_only_maps_with_exact_logit_maps_are_the_exact_ones(setting) -> None:
    """With a 'predictor' returning the true per-class logit maps, the fast class maps are the exact ones."""
    net, images, cm = setting
    with torch.no_grad():
        stages = net.forward_stages(images)

    exact = tuple(_logit_maps(net, images, s) for s in range(2))

    class ExactLogitMaps(nn.Module):
        def forward(self, a2, a3, z4):
            return exact

    fast = fast_class_maps(net, ExactLogitMaps(), images)
    for mode in ("soft", "agnostic"):
        _close(maps_for_mode(fast, mode), maps_for_mode(cm, mode))
    assert [m.shape[-2:] for m in fast.maps] == [s.shape[-2:] for s in stages]


def _logit_maps(net: AttributeNet, images: Tensor, stage: int) -> Tensor:
    """Grad-CAM maps of every *logit* (not probability) at layer2 (0) or layer3 (1): (B, sum C, h, w)."""
    a2 = net.forward_to_stage2(images).detach().requires_grad_()
    a3 = net.stage2_to_3(a2)
    logits = torch.cat(net.head_from_stage4(net.stage3_to_4(a3)), dim=1)  # (B, sum C)
    act = a2 if stage == 0 else a3
    maps = []
    for j in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, j].sum(), act, retain_graph=True)
        maps.append((grad.mean(dim=(-2, -1))[:, :, None, None] * act).sum(1))
    return torch.stack(maps, dim=1).detach()


def test_noisy_draws_follow_the_confusion_and_keep_unlabelled_entries() -> None:
    confusion = [torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.eye(3)]
    labels = torch.tensor([[0, 2], [1, -1]]).repeat(5000, 1)  # (10000, 2)
    drawn = draw_classes(labels, confusion, torch.Generator().manual_seed(0))
    assert torch.equal(drawn[:, 1], labels[:, 1])  # an identity confusion never flips; -1 stays -1
    flips0 = (drawn[0::2, 0] == 1).float().mean()
    flips1 = (drawn[1::2, 0] == 0).float().mean()
    assert abs(float(flips0) - 0.1) < 0.015 and abs(float(flips1) - 0.3) < 0.02
    again = draw_classes(labels, confusion, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)  # a seeded draw: paired and resumable
