"""ReIDNet: shapes and backward in every mode, ASAM placement, validation errors."""

from __future__ import annotations

import pytest
import torch

from sangal.errors import ConfigError
from sangal.models import ReIDNet, ReIDOutput
from sangal.models.reid_net import MODES
from sangal.train.losses import reid_losses

ATTR_CLASSES = [2, 3, 2, 4]  # K = 4
K = len(ATTR_CLASSES)
H, W = 32, 16


def _aah(batch: int, sizes=((4, 2), (2, 1), (2, 1)), value: float | None = None):
    if value is None:
        return tuple(torch.rand(batch, K, h, w) for h, w in sizes)
    return tuple(torch.full((batch, K, h, w), value) for h, w in sizes)


def _net(mode: str, **kwargs) -> ReIDNet:
    torch.manual_seed(0)
    return ReIDNet(5, ATTR_CLASSES, mode=mode, backbone="resnet18", pretrained=False, **kwargs)


@pytest.mark.parametrize("mode", MODES)
def test_shapes_and_backward_every_mode(mode):
    net = _net(mode).train()
    x = torch.randn(4, 3, H, W)
    aah = _aah(4) if mode == "san-gal" else None
    out = net(x, aah)
    assert isinstance(out, ReIDOutput)
    assert out.features.shape == (4, 512) and out.global_features.shape == (4, 512)
    assert out.logits.shape == (4, 5)
    if mode == "id":
        assert out.attr_logits is None
    else:
        assert [tuple(t.shape) for t in out.attr_logits] == [(4, c) for c in ATTR_CLASSES]
    pids = torch.tensor([0, 0, 3, 3])
    attrs = torch.tensor([[0, 1, -1, 3], [1, 2, 0, 0], [0, 0, 1, -1], [1, 1, 1, 2]])
    terms = reid_losses(out, pids, attrs, {"id": 1.0, "triplet": 1.0, "attr": 1.0})
    assert ("attr" in terms) == (mode != "id")
    terms["total"].backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    # same return type in evaluation
    net.eval()
    with torch.no_grad():
        out_eval = net(x[:2], None if aah is None else tuple(a[:2] for a in aah))
    assert isinstance(out_eval, ReIDOutput) and out_eval.features.shape == (2, 512)


def test_resnet50_san_gal_shapes():
    torch.manual_seed(0)
    net = ReIDNet(7, ATTR_CLASSES, mode="san-gal", backbone="resnet50", pretrained=False).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, H, W), _aah(1))
    assert out.features.shape == (1, 2048) and out.global_features.shape == (1, 2048)
    assert out.logits.shape == (1, 7)
    assert len(out.attr_logits) == K


def test_bnneck_bias_frozen_and_classifier_bias_free():
    net = _net("id")
    assert not net.bottleneck.bias.requires_grad
    assert net.classifier.bias is None


def test_heat_maps_change_features_at_each_stage():
    net = _net("san-gal").eval()
    x = torch.randn(2, 3, H, W)
    zeros, ones = _aah(2, value=0.0), _aah(2, value=1.0)
    with torch.no_grad():
        base = net(x, zeros).features
        assert not torch.allclose(base, net(x, ones).features)
        for stage in range(3):  # each of layer2, layer3, layer4 is attended
            mixed = list(zeros)
            mixed[stage] = ones[stage]
            assert not torch.allclose(base, net(x, tuple(mixed)).features), stage


def test_asam_hooks_after_layer2_3_4():
    net = _net("san-gal").eval()
    seen = []
    net.asam.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    with torch.no_grad():
        net(torch.randn(1, 3, H, W), _aah(1))
    assert seen == list(net.backbone.channels[1:])  # layer2, layer3, layer4 outputs


def test_parameter_counts_across_modes():
    def count(net):
        return sum(p.numel() for p in net.parameters())

    id_net, attr_net, sg_net = _net("id"), _net("id+attr"), _net("san-gal")
    head_params = sum(p.numel() for p in attr_net.attr_heads.parameters())
    assert head_params == sum(2 * 512 + 512 * c + c for c in ATTR_CLASSES)
    assert count(id_net) == count(attr_net) - head_params
    assert count(sg_net) == count(attr_net)  # ASAM adds no parameters
    assert set(sg_net.state_dict()) == set(attr_net.state_dict())


def test_san_gal_differs_from_id_attr_only_by_asam():
    # id+attr and san-gal with heat maps of zeros differ only by ASAM
    x = torch.randn(2, 3, H, W)
    attr_net, sg_net = _net("id+attr").eval(), _net("san-gal").eval()
    sg_net.load_state_dict(attr_net.state_dict())
    with torch.no_grad():
        plain = attr_net(x).features
        attended = sg_net(x, _aah(2, value=0.0)).features
    assert not torch.allclose(plain, attended)  # alpha = 0.5 on the second half


def test_extra_sigmoid_option_changes_output():
    x = torch.randn(1, 3, H, W)
    aah = _aah(1)
    a, b = _net("san-gal").eval(), _net("san-gal", extra_sigmoid=True).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert not torch.allclose(a(x, aah).features, b(x, aah).features)


def test_mode_and_argument_validation():
    with pytest.raises(ConfigError, match="valid: id, id\\+attr, san-gal"):
        ReIDNet(5, ATTR_CLASSES, mode="attention", backbone="resnet18", pretrained=False)
    with pytest.raises(ConfigError, match="needs attr_classes"):
        ReIDNet(5, None, mode="san-gal", backbone="resnet18", pretrained=False)
    with pytest.raises(ConfigError, match="needs attr_classes"):
        ReIDNet(5, [], mode="id+attr", backbone="resnet18", pretrained=False)
    with pytest.raises(ConfigError, match="num_ids"):
        ReIDNet(0, None, mode="id", backbone="resnet18", pretrained=False)
    with pytest.raises(ConfigError, match=">= 2 classes"):
        ReIDNet(5, [2, 1], mode="id+attr", backbone="resnet18", pretrained=False)
    ReIDNet(5, None, mode="id", backbone="resnet18", pretrained=False)  # id needs no attributes


def test_heat_map_errors():
    x = torch.randn(1, 3, H, W)
    with pytest.raises(ValueError, match="needs heat maps"):
        _net("san-gal")(x)
    with pytest.raises(ValueError, match="mode 'id'.*no attention"):
        _net("id")(x, _aah(1))
    with pytest.raises(ValueError, match="mode 'id\\+attr'"):
        _net("id+attr")(x, _aah(1))
    with pytest.raises(ValueError, match="3 heat-map tensors"):
        _net("san-gal")(x, _aah(1)[:2])
    bad = list(_aah(1))
    bad[1] = torch.rand(1, K + 1, 2, 1)
    with pytest.raises(ValueError, match="ASAM after layer3: .*built for 4 attributes got 5"):
        _net("san-gal")(x, tuple(bad))


def test_arch_dict():
    net = ReIDNet(5, ATTR_CLASSES, mode="san-gal", backbone="resnet18", pretrained=False,
                  last_stride=2, extra_sigmoid=True, asam_stages=(3, 2), asam_gain=2.0)
    assert net.arch_dict() == {
        "kind": "reid", "backbone": "resnet18", "last_stride": 2, "num_ids": 5,
        "attr_classes": ATTR_CLASSES, "mode": "san-gal", "extra_sigmoid": True,
        "asam_stages": [2, 3], "asam_gain": 2.0, "asam_form": "paper", "attr_pool": False,
    }
    rebuilt = ReIDNet(**{k: v for k, v in net.arch_dict().items() if k != "kind"}, pretrained=False)
    rebuilt.load_state_dict(net.state_dict())
    assert _net("id").arch_dict()["attr_classes"] == ATTR_CLASSES


def test_asam_stages_only_attend_where_asked():
    """A stage left out of asam_stages ignores its heat maps; the attended stages do not."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 32)
    net = ReIDNet(5, ATTR_CLASSES, mode="san-gal", backbone="resnet18", pretrained=False, asam_stages=(2, 3)).eval()
    aah = list(_aah(2))
    base = net(x, tuple(aah)).features
    changed4 = list(aah)
    changed4[2] = torch.rand_like(aah[2])
    torch.testing.assert_close(net(x, tuple(changed4)).features, base)  # layer4 maps unused
    changed2 = list(aah)
    changed2[0] = torch.rand_like(aah[0])
    assert not torch.allclose(net(x, tuple(changed2)).features, base)
    with pytest.raises(ConfigError, match="asam_stages"):
        ReIDNet(5, ATTR_CLASSES, mode="san-gal", backbone="resnet18", pretrained=False, asam_stages=(1,))


def test_mobilenet_v2_san_gal_with_a_stage_narrower_than_2k():
    """MobileNetV2's layer2 has 32 channels: C/2 = 16 < K = 27 (ASAM's grouped reading), and it still attends."""
    classes = [2] * 9 + [4] + [2] * 17
    torch.manual_seed(0)
    net = ReIDNet(5, classes, mode="san-gal", backbone="mobilenet_v2", pretrained=False).train()
    assert net.backbone.channels[1] // 2 < len(classes)
    sizes = ((8, 4), (4, 2), (4, 2))  # 64x32 input: strides 8, 16, 16
    maps = [torch.rand(4, 27, h, w) for h, w in sizes]
    x = torch.randn(4, 3, 64, 32)
    out = net(x, maps)
    assert out.features.shape == (4, 1280) and len(out.attr_logits) == 27
    terms = reid_losses(out, torch.tensor([0, 0, 3, 3]), torch.zeros(4, 27, dtype=torch.long),
                        {"id": 1.0, "triplet": 1.0, "attr": 1.0})
    terms["total"].backward()
    assert net.backbone.features[0][0].weight.grad.abs().sum() > 0
    net.eval()
    zeros = [torch.zeros(2, 27, h, w) for h, w in sizes]
    with torch.no_grad():
        base = net(x[:2], zeros).features
        layer2_only = [torch.ones_like(zeros[0]), zeros[1], zeros[2]]
        assert not torch.allclose(base, net(x[:2], layer2_only).features)


MARKET = [2] * 9 + [4] + [2] * 17  # K = 27: MobileNetV2's layer2 (C/2 = 16) is a grouped stage


def _id_and_san_gal(backbone: str, form: str) -> tuple[ReIDNet, ReIDNet]:
    """Both nets built from the same seed, as ``sangal train`` builds each variant of a paired study."""
    torch.manual_seed(0)
    ident = ReIDNet(5, MARKET, mode="id", backbone=backbone, pretrained=False)
    torch.manual_seed(0)
    return ident, ReIDNet(5, MARKET, mode="san-gal", backbone=backbone, pretrained=False, asam_form=form)


@pytest.mark.parametrize("form", ["gated", "mixed"])
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_learned_forms_compute_the_id_nets_features_to_the_bit_at_step_0(backbone: str, form: str) -> None:
    from sangal.train.reid import shared_init_digest

    ident, san_gal = _id_and_san_gal(backbone, form)
    assert shared_init_digest(ident) == shared_init_digest(san_gal)
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    maps = [torch.rand(4, 27, h, w) for h, w in ((8, 4), (4, 2), (2, 1))]
    maps = [m / m.amax(dim=(2, 3), keepdim=True) for m in maps]  # max-normalised, as the caches hold
    for training in (True, False):  # BN on batch statistics, then on running statistics
        ident.train(training)
        san_gal.train(training)
        with torch.no_grad():
            a, b = ident(x), san_gal(x, maps)
        assert torch.equal(a.features, b.features) and torch.equal(a.global_features, b.global_features)
    _, paper = _id_and_san_gal(backbone, "paper")  # the paper form does change them: the check can fail
    with torch.no_grad():
        assert not torch.equal(paper.eval()(x, maps).features, ident(x).features)


def test_asam_form_parameters_sit_outside_the_backbone_and_are_logged() -> None:
    """gated: one gate per attended stage; mixed: a (C/2, K) W per stage; none in the backbone's names."""
    gated = ReIDNet(5, MARKET, mode="san-gal", backbone="mobilenet_v2", pretrained=False, asam_form="gated",
                    asam_stages=(2, 4))
    assert {n for n, _ in gated.named_parameters() if n.startswith("asam.")} == {"asam.gate.layer2",
                                                                                 "asam.gate.layer4"}
    assert gated.asam_gates() == {"asam_gate_layer2": 0.0, "asam_gate_layer4": 0.0}
    mixed = ReIDNet(5, MARKET, mode="san-gal", backbone="mobilenet_v2", pretrained=False, asam_form="mixed")
    shapes = {n: tuple(p.shape) for n, p in mixed.named_parameters() if n.startswith("asam.")}
    assert shapes == {"asam.mix.layer2": (16, 27, 1, 1), "asam.mix.layer3": (48, 27, 1, 1),
                      "asam.mix.layer4": (640, 27, 1, 1)}
    assert set(mixed.asam_gates()) == {"asam_mix_layer2", "asam_mix_layer3", "asam_mix_layer4"}
    assert _net("san-gal").asam_gates() == {} and _net("id").asam_gates() == {}
    with pytest.raises(ConfigError, match="unknown ASAM form 'soft'"):
        _net("san-gal", asam_form="soft")


@pytest.mark.parametrize("form", ["gated", "mixed"])
def test_learned_forms_train_their_gates_through_the_net(form: str) -> None:
    torch.manual_seed(0)
    net = _net("san-gal", asam_form=form).train()
    out = net(torch.randn(4, 3, H, W), _aah(4))
    terms = reid_losses(out, torch.tensor([0, 0, 3, 3]), None, {"id": 1.0, "triplet": 1.0})
    terms["total"].backward()
    for name, p in net.asam.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("form", ["gated", "mixed"])
def test_the_step_0_identity_holds_in_the_demos_channels_last_and_under_bf16_autocast(form: str) -> None:
    from sangal.runtime.precision import channels_last

    ident, san_gal = (channels_last(net, True).eval() for net in _id_and_san_gal("mobilenet_v2", form))
    x = channels_last(torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(2)), True)
    maps = [torch.rand(2, 27, h, w) for h, w in ((8, 4), (4, 2), (4, 2))]
    for amp in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            a, b = ident(x), san_gal(x, maps)
        assert b.features.dtype == (torch.bfloat16 if amp else torch.float32)
        assert torch.equal(a.features, b.features) and torch.equal(a.global_features, b.global_features)


def test_stage_attention_on_request_leaves_the_features_as_they_are():
    from sangal.models.reid_net import ReIDNet

    torch.manual_seed(0)
    net = ReIDNet(num_ids=5, attr_classes=None, mode="id", backbone="resnet18", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 32)
    plain = net(x)
    seen = net(x, attention=True)
    assert plain.attention is None
    assert torch.equal(plain.features, seen.features)
    assert [tuple(a.shape) for a in seen.attention] == [(2, 8, 4), (2, 4, 2), (2, 4, 2)]  # stride 8, 16, 16
    assert all((a >= 0).all() for a in seen.attention)


def test_attribute_guided_pooling_appends_the_map_weighted_average():
    from sangal.models.reid_net import ReIDNet, map_pool

    act = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)  # (B, D, h, w)
    uniform = torch.full((2, 5, 4, 2), 0.3)
    assert torch.allclose(map_pool(act, uniform), act.mean((2, 3)))  # a flat map is the global average
    spot = torch.zeros(2, 5, 4, 2)
    spot[:, :, 1, 0] = 1.0  # every attribute looks at one place: the pooled feature is that place's
    assert torch.allclose(map_pool(act, spot), act[:, :, 1, 0])
    assert torch.allclose(map_pool(act, torch.zeros(2, 5, 2, 1)), torch.zeros(2, 3))
    torch.manual_seed(0)
    net = ReIDNet(num_ids=5, attr_classes=[2, 3], mode="san-gal", backbone="resnet18", pretrained=False,
                  asam_form="mean1", attr_pool=True).eval()
    maps = [torch.rand(2, 2, 8, 4), torch.rand(2, 2, 4, 2), torch.rand(2, 2, 4, 2)]
    out = net(torch.randn(2, 3, 64, 32), maps)
    assert out.features.shape == (2, 2 * 512) and out.global_features.shape == (2, 1024)
    assert [tuple(t.shape) for t in out.attr_logits] == [(2, 2), (2, 3)]  # the heads read the global half
    assert net.arch_dict()["attr_pool"] is True
    with pytest.raises(ConfigError, match="attr_pool"):
        ReIDNet(num_ids=5, attr_classes=[2], mode="id+attr", backbone="resnet18", pretrained=False, attr_pool=True)
