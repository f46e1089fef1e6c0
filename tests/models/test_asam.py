"""ASAM (eqs. 3–4): parameter-free, first half untouched, closed forms, loop reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sangal.models.asam import ASAM, asam, block_bounds, block_index


def reference_asam(x: torch.Tensor, aah: torch.Tensor, extra_sigmoid: bool = False) -> torch.Tensor:
    """Direct loop transcription of eqs. 3–4 (blocks: [floor(k*C/K), floor((k+1)*C/K)))."""
    b, c, h, w = x.shape
    k_attrs = aah.shape[1]
    if aah.shape[-2:] != (h, w):
        aah = F.interpolate(aah, size=(h, w), mode="bilinear", align_corners=False)
    half = c // 2
    out = x.clone()
    for n in range(b):
        for k in range(k_attrs):
            s1, e1 = k * half // k_attrs, (k + 1) * half // k_attrs
            # eq. 3: average over the block's channels and all h*w positions, sigmoid
            total = 0.0
            for ch in range(s1, e1):
                total += float(x[n, ch].sum())
            beta = 1.0 / (1.0 + math.exp(-total / ((e1 - s1) * h * w)))
            # eq. 4
            alpha = torch.sigmoid(beta * aah[n, k])
            if extra_sigmoid:
                alpha = torch.sigmoid(alpha)
            for ch in range(half + s1, half + e1):
                out[n, ch] = x[n, ch] * alpha
    return out


def test_block_bounds_rule():
    bounds = block_bounds(32, 27)
    assert len(bounds) == 27
    assert bounds[0][0] == 0 and bounds[-1][1] == 32
    assert all(prev[1] == nxt[0] for prev, nxt in zip(bounds, bounds[1:]))
    assert {e - s for s, e in bounds} == {1, 2}
    assert bounds == [(k * 32 // 27, (k + 1) * 32 // 27) for k in range(27)]
    idx = block_index(32, 27)
    assert idx.tolist() == [k for k, (s, e) in enumerate(bounds) for _ in range(s, e)]
    assert block_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError, match="cannot be split into 5 blocks"):
        block_bounds(4, 5)


def test_no_parameters_or_persistent_buffers():
    module = ASAM(27)
    assert list(module.parameters()) == []
    assert module.state_dict() == {}
    assert "num_attrs=27" in repr(module)


def test_first_half_bit_identical_and_shape():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 8, 4)
    aah = torch.rand(2, 27, 8, 4)
    out = ASAM(27)(x, aah)
    assert out.shape == x.shape
    assert torch.equal(out[:, :32], x[:, :32])
    assert not torch.equal(out[:, 32:], x[:, 32:])


def test_constant_inputs_closed_form():
    c, a = 0.7, 0.4
    x = torch.full((2, 16, 6, 3), c)
    aah = torch.full((2, 4, 6, 3), a)
    expected = c * torch.sigmoid(torch.sigmoid(torch.tensor(c)) * a)
    out = asam(x, aah)
    torch.testing.assert_close(out[:, 8:], torch.full_like(out[:, 8:], float(expected)))
    out2 = asam(x, aah, extra_sigmoid=True)
    expected2 = c * torch.sigmoid(torch.sigmoid(torch.sigmoid(torch.tensor(c)) * a))
    torch.testing.assert_close(out2[:, 8:], torch.full_like(out2[:, 8:], float(expected2)))


@pytest.mark.parametrize("extra_sigmoid", [False, True])
def test_matches_loop_reference_uneven_blocks_and_resize(extra_sigmoid):
    torch.manual_seed(1)
    x = torch.randn(2, 64, 8, 4, dtype=torch.float64)  # C1 = 32 not divisible by K = 27
    aah = torch.rand(2, 27, 5, 3, dtype=torch.float64)  # other spatial size -> bilinear resize
    out = asam(x, aah, extra_sigmoid=extra_sigmoid)
    ref = reference_asam(x, aah, extra_sigmoid=extra_sigmoid)
    torch.testing.assert_close(out, ref)


def test_block_k_of_second_half_depends_only_on_map_k():
    torch.manual_seed(2)
    x = torch.rand(1, 16, 4, 4)
    aah = torch.rand(1, 4, 4, 4)
    changed = aah.clone()
    changed[:, 2] += 1.0
    diff = (asam(x, changed) - asam(x, aah)).abs().sum(dim=(0, 2, 3))  # (16,)
    s, e = block_bounds(8, 4)[2]
    touched = torch.zeros(16, dtype=torch.bool)
    touched[8 + s : 8 + e] = True
    assert (diff[touched] > 0).all()
    assert (diff[~touched] == 0).all()


def test_gradient_flows_to_x():
    torch.manual_seed(3)
    x = torch.randn(2, 32, 4, 2, requires_grad=True)
    aah = torch.rand(2, 5, 4, 2)
    asam(x, aah).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[:, :16].abs().sum() > 0 and x.grad[:, 16:].abs().sum() > 0


def test_extra_sigmoid_squeezes_alpha():
    x = torch.ones(1, 8, 2, 2)
    aah = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()
    alpha = asam(x, aah)[:, 4:, 0, 0]  # x == 1 so output == alpha
    alpha_extra = asam(x, aah, extra_sigmoid=True)[:, 4:, 0, 0]
    torch.testing.assert_close(alpha_extra, torch.sigmoid(alpha))
    assert alpha[0, 0] == pytest.approx(0.5)
    contrast = alpha[0, 2] / alpha[0, 0]
    contrast_extra = alpha_extra[0, 2] / alpha_extra[0, 0]
    assert contrast > contrast_extra > 1.0


@pytest.mark.parametrize(
    ("x_shape", "aah_shape", "match"),
    [
        ((2, 15, 4, 4), (2, 3, 4, 4), "even number of channels"),
        ((2, 8, 4, 4), (3, 3, 4, 4), "batch mismatch"),
        ((8, 4, 4), (2, 3, 4, 4), r"\(B, C, h, w\)"),
        ((2, 8, 4, 4), (3, 4, 4), r"\(B, K, h, w\)"),
    ],
)
def test_bad_shapes(x_shape, aah_shape, match):
    with pytest.raises(ValueError, match=match):
        asam(torch.rand(x_shape), torch.rand(aah_shape))


def test_module_checks_number_of_maps():
    with pytest.raises(ValueError, match="built for 3 attributes got 4"):
        ASAM(3)(torch.rand(1, 16, 2, 2), torch.rand(1, 4, 2, 2))
    with pytest.raises(ValueError, match="at least one attribute"):
        ASAM(0)


def test_gain_scales_the_attention_logit() -> None:
    """alpha = sigmoid(gain * beta * AAH): gain 1 is eq. 4, gain 0 is a constant 0.5."""
    torch.manual_seed(0)
    x, aah = torch.randn(2, 8, 4, 2), torch.rand(2, 2, 4, 2)
    torch.testing.assert_close(asam(x, aah, gain=1.0), asam(x, aah))
    out0 = asam(x, aah, gain=0.0)
    torch.testing.assert_close(out0[:, 4:], 0.5 * x[:, 4:])
    wide, narrow = asam(x, aah, gain=4.0), asam(x, aah)
    assert not torch.allclose(wide, narrow)


def test_narrow_stage_hand_computed() -> None:
    """C/2 = 2 < K = 3: channel 0 holds attribute 0, channel 1 holds attributes 1 and 2."""
    a, b, u, v = 0.3, -1.2, 2.0, -0.5  # x1 channels (a, b), x2 channels (u, v), one position
    maps = (0.9, 0.2, 0.6)
    x = torch.tensor([a, b, u, v], dtype=torch.float64).view(1, 4, 1, 1)
    aah = torch.tensor(maps, dtype=torch.float64).view(1, 3, 1, 1)

    def sig(t: float) -> float:
        return 1.0 / (1.0 + math.exp(-t))

    alpha = [sig(sig(a) * maps[0]), sig(sig(b) * maps[1]), sig(sig(b) * maps[2])]
    expected = [a, b, u * alpha[0], v * (alpha[1] + alpha[2]) / 2]
    out = asam(x, aah).flatten().tolist()
    assert out == pytest.approx(expected, rel=1e-12)
    expected_extra = [a, b, u * sig(alpha[0]), v * (sig(alpha[1]) + sig(alpha[2])) / 2]
    assert asam(x, aah, extra_sigmoid=True).flatten().tolist() == pytest.approx(expected_extra, rel=1e-12)


def reference_asam_narrow(x: torch.Tensor, aah: torch.Tensor) -> torch.Tensor:
    """Loop transcription of the narrow rule: channel c holds attributes [floor(c*K/H), floor((c+1)*K/H))."""
    b, c, h, w = x.shape
    k_attrs, half = aah.shape[1], c // 2
    if aah.shape[-2:] != (h, w):
        aah = F.interpolate(aah, size=(h, w), mode="bilinear", align_corners=False)
    out = x.clone()
    for n in range(b):
        for ch in range(half):
            group = range(ch * k_attrs // half, (ch + 1) * k_attrs // half)
            beta = torch.sigmoid(x[n, ch].mean())
            alphas = [torch.sigmoid(beta * aah[n, k]) for k in group]
            out[n, half + ch] = x[n, half + ch] * sum(alphas) / len(alphas)
    return out


def test_narrow_stage_matches_loop_reference_mobilenet_layer2() -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 32, 8, 4, dtype=torch.float64)  # MobileNetV2 layer2: C/2 = 16 < K = 27
    aah = torch.rand(2, 27, 4, 2, dtype=torch.float64)
    out = asam(x, aah)
    torch.testing.assert_close(out, reference_asam_narrow(x, aah))
    assert torch.equal(out[:, :16], x[:, :16])


def test_narrow_stage_map_k_moves_only_its_channel() -> None:
    torch.manual_seed(5)
    x, aah = torch.rand(1, 10, 3, 3), torch.rand(1, 7, 3, 3)  # C/2 = 5 < K = 7
    changed = aah.clone()
    changed[:, 3] += 1.0
    diff = (asam(x, changed) - asam(x, aah)).abs().sum(dim=(0, 2, 3))  # (10,)
    holder = block_index(7, 5)[3].item()  # the channel whose group holds attribute 3
    assert [i for i in range(10) if diff[i] > 0] == [5 + holder]
