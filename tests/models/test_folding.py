"""Eval-mode BatchNorm folded into its convolution: the same stage outputs, no BatchNorm left, the original kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sangal.models.attribute_net import AttributeNet
from sangal.models.folding import fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_statistics(net: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from 0/1, so that a BatchNorm left out would show."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_folded_stages_equal_the_original_and_no_batchnorm_is_left(backbone) -> None:
    torch.manual_seed(0)
    net = _with_statistics(AttributeNet([2, 3], backbone=backbone, pretrained=False))
    images = torch.randn(2, 3, 64, 32)
    folded = fold_batchnorm(net, images[:1])
    assert folded is not net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.backbone.modules())  # the original is untouched
    with torch.no_grad():
        for a, b in zip(net.forward_stages(images), folded.forward_stages(images)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
        for a, b in zip(net.head_from_stage4(net.forward_stages(images)[2]),
                        folded.head_from_stage4(folded.forward_stages(images)[2])):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


class _BatchNormAfterActivation(nn.Module):
    """Children listed conv, bn, relu, but ``forward_stages`` applies the BatchNorm after the ReLU: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()

    def forward_stages(self, x):
        y = self.bn(self.relu(self.conv(x)))
        return y, y, y


def test_a_batchnorm_that_does_not_follow_its_convolution_or_a_training_net_is_left_alone() -> None:
    odd = _with_statistics(_BatchNormAfterActivation())
    probe = torch.randn(1, 3, 16, 8)
    assert fold_batchnorm(odd, probe) is odd  # the folded copy's outputs differ: the original is used
    training = AttributeNet([2], backbone="resnet18", pretrained=False).train()
    assert fold_batchnorm(training, probe) is training  # batch statistics are no fixed affine map
