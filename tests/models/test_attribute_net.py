"""AttributeNet: shapes, staged forward, predict, backward, arch dict (CPU, tiny inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sangal.errors import ConfigError
from sangal.models.attribute_net import AttributeNet, AttributeOutput

MARKET_CLASSES = [2] * 9 + [4] + [2] * 17  # Market-1501 binary schema, K = 27


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net18() -> AttributeNet:
    torch.manual_seed(0)
    return AttributeNet(MARKET_CLASSES, backbone="resnet18", pretrained=False).eval()


def test_resnet18_shapes(net18: AttributeNet) -> None:
    x = torch.randn(2, 3, 64, 32)
    out = net18(x)
    assert isinstance(out, AttributeOutput)
    assert [tuple(z.shape) for z in out.logits] == [(2, c) for c in MARKET_CLASSES]
    assert tuple(out.features.shape) == (2, 512)
    # last stride 1: layer3 and layer4 both at H/16 x W/16
    assert [tuple(a.shape) for a in out.stages] == [(2, 128, 8, 4), (2, 256, 4, 2), (2, 512, 4, 2)]
    assert net18.num_attributes == 27


def test_resnet50_shapes_and_last_stride_2() -> None:
    torch.manual_seed(0)
    net = AttributeNet([2, 4, 3], backbone="resnet50", pretrained=False, last_stride=2).eval()
    out = net(torch.randn(2, 3, 64, 32))
    assert [tuple(z.shape) for z in out.logits] == [(2, 2), (2, 4), (2, 3)]
    assert tuple(out.features.shape) == (2, 2048)
    assert [tuple(a.shape) for a in out.stages] == [(2, 512, 8, 4), (2, 1024, 4, 2), (2, 2048, 2, 1)]


def test_staged_forward_composes_to_forward(net18: AttributeNet) -> None:
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = net18(x)
        a2 = net18.forward_to_stage2(x)
        a3 = net18.stage2_to_3(a2)
        a4 = net18.stage3_to_4(a3)
        logits = net18.head_from_stage4(a4)
        stages = net18.forward_stages(x)
    for a, b in zip((a2, a3, a4), out.stages):
        torch.testing.assert_close(a, b)
    for a, b in zip(stages, out.stages):
        torch.testing.assert_close(a, b)
    for z, ref in zip(logits, out.logits):
        torch.testing.assert_close(z, ref)
    torch.testing.assert_close(net18.pool_features(a4), a4.mean(dim=(2, 3)))


def test_predict_is_argmax_of_softmax(net18: AttributeNet) -> None:
    x = torch.randn(3, 3, 64, 32)
    probs, labels = net18.predict(x)
    logits = net18(x).logits
    assert labels.shape == (3, 27) and labels.dtype == torch.int64
    for k, (p, z) in enumerate(zip(probs, logits)):
        assert not p.requires_grad
        torch.testing.assert_close(p.sum(dim=1), torch.ones(3))
        torch.testing.assert_close(p, torch.softmax(z.detach(), dim=1))
        assert torch.equal(labels[:, k], z.argmax(dim=1))


def test_backward_reaches_all_parameters_without_nan() -> None:
    torch.manual_seed(1)
    net = AttributeNet(MARKET_CLASSES, backbone="resnet18", pretrained=False).train()
    x = torch.randn(3, 3, 64, 32)
    targets = torch.stack([torch.randint(0, c, (3,)) for c in MARKET_CLASSES], dim=1)
    out = net(x)
    loss = sum(F.cross_entropy(z, targets[:, k]) for k, z in enumerate(out.logits)) / 27
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert net.heads[9].fc.weight.grad.abs().sum() > 0
    assert net.backbone.conv1.weight.grad.abs().sum() > 0


def test_each_head_is_bn_then_fc_on_the_pooled_feature(net18: AttributeNet) -> None:
    f = torch.randn(3, 512)
    with torch.no_grad():
        got = net18.head_from_features(f)[9]
        head = net18.heads[9]
        ref = F.linear(F.batch_norm(f, head.bn.running_mean, head.bn.running_var,
                                    head.bn.weight, head.bn.bias, False, 0.0, head.bn.eps),
                       head.fc.weight, head.fc.bias)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, ref)


def test_arch_dict(net18: AttributeNet) -> None:
    assert net18.arch_dict() == {
        "kind": "attribute",
        "backbone": "resnet18",
        "last_stride": 1,
        "attr_classes": MARKET_CLASSES,
    }


@pytest.mark.parametrize("bad", [[], [2, 1], [0]])
def test_rejects_bad_num_classes(bad: list[int]) -> None:
    with pytest.raises(ConfigError):
        AttributeNet(bad, backbone="resnet18", pretrained=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_follows_input_device_cuda() -> None:
    net = AttributeNet([2, 4], backbone="resnet18", pretrained=False).eval().cuda()
    out = net(torch.randn(2, 3, 64, 32, device="cuda"))
    assert all(z.is_cuda for z in out.logits) and out.features.is_cuda
    _, labels = net.predict(torch.randn(2, 3, 64, 32, device="cuda"))
    assert labels.is_cuda
