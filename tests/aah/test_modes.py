"""Class-agnostic heat maps: |S| for two-class heads, independent of labels and predictions."""

from __future__ import annotations

import torch

from sangal.aah.gradcam import attribute_heatmaps, normalize_heatmaps
from sangal.aah.modes import class_agnostic_heatmaps
from sangal.aah.spec import MapSpec
from sangal.models.attribute_net import AttributeNet


def _net(classes):
    torch.manual_seed(0)
    return AttributeNet(classes, backbone="resnet18", pretrained=False).eval()


def test_binary_heads_give_the_absolute_class_map(one_torch_thread) -> None:
    net = _net([2, 2])
    x = torch.randn(3, 3, 64, 32)
    agnostic = class_agnostic_heatmaps(lambda t: attribute_heatmaps(net, x, t, normalize="none"), [2, 2], 3, "cpu",
                                       normalize="none")
    yes = attribute_heatmaps(net, x, torch.ones(3, 2, dtype=torch.long), normalize="none")
    no = attribute_heatmaps(net, x, torch.zeros(3, 2, dtype=torch.long), normalize="none")
    for a, y, n in zip(agnostic, yes, no):
        torch.testing.assert_close(a, y + n)
        assert bool(((y > 0) & (n > 0)).sum() == 0)  # ReLU(S) and ReLU(-S) never overlap
    # whatever the label, the label-guided map is one of the two halves; the agnostic map holds both
    assert all(bool((a >= y).all()) for a, y in zip(agnostic, yes))


def test_multiclass_heads_sum_over_their_own_classes_only(one_torch_thread) -> None:
    net = _net([2, 4])
    x = torch.randn(2, 3, 64, 32)
    agnostic = class_agnostic_heatmaps(lambda t: attribute_heatmaps(net, x, t, normalize="none"), [2, 4], 2, "cpu")
    expected = [0, 0, 0]
    for c in range(4):
        t = torch.tensor([[min(c, 1), c]] * 2)
        maps = attribute_heatmaps(net, x, t, normalize="none")
        for s in range(3):
            m = maps[s].clone()
            if c >= 2:
                m[:, 0] = 0  # head 0 has no class 2 or 3
            expected[s] = expected[s] + m
    for a, e in zip(agnostic, expected):
        torch.testing.assert_close(a, normalize_heatmaps(e, "max"))
        assert float(a.amax()) <= 1.0 + 1e-6


def test_test_time_maps_never_follow_labels() -> None:
    for split in ("query", "gallery"):
        assert MapSpec("labels").mode(split) == "predicted"
        assert MapSpec("predicted").mode(split) == "predicted"
        assert MapSpec("agnostic").mode(split) == "agnostic"
    assert MapSpec("labels").mode("train") == "labels"


def test_one_signed_pass_equals_the_two_class_sum(one_torch_thread) -> None:
    net = _net([2, 2, 2])
    x = torch.randn(2, 3, 64, 32)
    two = class_agnostic_heatmaps(lambda t: attribute_heatmaps(net, x, t, normalize="none"), [2, 2, 2], 2, "cpu")
    calls = []

    def signed(t):
        calls.append(t)
        return attribute_heatmaps(net, x, t, normalize="none", signed=True)

    one = class_agnostic_heatmaps(lambda t: attribute_heatmaps(net, x, t, normalize="none"), [2, 2, 2], 2, "cpu",
                                  signed_fn=signed)
    assert len(calls) == 1
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    signed_maps = attribute_heatmaps(net, x, None, normalize="none", signed=True)
    assert any(bool((m < 0).any()) for m in signed_maps)  # no ReLU


def test_signed_pass_with_a_multiclass_head_uses_its_predicted_class(one_torch_thread) -> None:
    net = _net([2, 4])
    x = torch.randn(2, 3, 64, 32)
    seen = []

    def signed(t):
        seen.append(t.clone())
        return attribute_heatmaps(net, x, t, normalize="none", signed=True)

    maps = class_agnostic_heatmaps(lambda t: attribute_heatmaps(net, x, t, normalize="none"), [2, 4], 2, "cpu",
                                   normalize="none", signed_fn=signed)
    assert len(seen) == 1 and seen[0][:, 0].tolist() == [1, 1] and seen[0][:, 1].tolist() == [-1, -1]
    predicted = attribute_heatmaps(net, x, None, normalize="none", signed=True)
    for m, p in zip(maps, predicted):
        torch.testing.assert_close(m[:, 1], p[:, 1].abs())  # multi-class head: |S| of the predicted class
