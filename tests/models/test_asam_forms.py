"""ASAM forms (issue 21): each form's math by hand, mean gain 1, exact identity at initialisation, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sangal.models.asam import ASAM, FORMS, asam

LEARNED = ("gated", "mixed")


def sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def _multiplier_by_hand(form: str, alphas: list[list[float]], holders: list[list[int]], weight) -> list[list[float]]:
    """M of x2's channels at each position from the per-attribute alphas (K lists over positions).

    ``holders[c]`` lists the attributes channel c follows (one on a wide stage, a group on a narrow one).
    """
    means = [sum(a) / len(a) for a in alphas]
    ratio = [[v / m for v in a] for a, m in zip(alphas, means)]
    out = []
    for c, group in enumerate(holders):
        row = []
        for p in range(len(alphas[0])):
            if form == "paper":
                row.append(sum(alphas[k][p] for k in group) / len(group))
            elif form == "mean1":
                row.append(sum(ratio[k][p] for k in group) / len(group))
            elif form == "residual":
                row.append(sum((1 + alphas[k][p]) / (1 + means[k]) for k in group) / len(group))
            elif form == "gated":
                row.append(1 + weight * (sum(ratio[k][p] for k in group) / len(group) - 1))
            else:  # mixed: every map reaches every channel, whatever the groups
                row.append(1 + sum(weight[c][k] * (ratio[k][p] - 1) for k in range(len(alphas))))
        out.append(row)
    return out


def _weight(form: str, rows: int, k: int):
    """A non-zero g or W as Python numbers and as the tensor ASAM takes."""
    if form == "gated":
        return 0.7, torch.tensor(0.7, dtype=torch.float64)
    if form == "mixed":
        w = [[0.3 * (r + 1) - 0.2 * j for j in range(k)] for r in range(rows)]
        return w, torch.tensor(w, dtype=torch.float64)[:, :, None, None]
    return None, None


@pytest.mark.parametrize("form", FORMS)
def test_wide_stage_by_hand(form: str) -> None:
    """C/2 = K = 2, two positions: block k of x2 follows map k."""
    x1 = [[0.3, -0.9], [1.1, 0.4]]  # 2 channels x 2 positions
    x2 = [[2.0, -0.5], [0.7, 1.5]]
    maps = [[0.9, 0.1], [0.2, 0.6]]  # K = 2 maps x 2 positions
    x = torch.tensor(x1 + x2, dtype=torch.float64).view(1, 4, 1, 2)
    aah = torch.tensor(maps, dtype=torch.float64).view(1, 2, 1, 2)
    betas = [sig(sum(ch) / 2) for ch in x1]  # eq. 3 (one channel per block)
    alphas = [[sig(b * v) for v in m] for b, m in zip(betas, maps)]  # eq. 4
    py_weight, weight = _weight(form, 2, 2)
    mult = _multiplier_by_hand(form, alphas, [[0], [1]], py_weight)
    expected = x1 + [[v * m for v, m in zip(x2[c], mult[c])] for c in range(2)]
    out = asam(x, aah, form=form, weight=weight).view(4, 2).tolist()
    assert out == [pytest.approx(row, rel=1e-12) for row in expected]


@pytest.mark.parametrize("form", FORMS)
def test_narrow_stage_by_hand(form: str) -> None:
    """C/2 = 2 < K = 3: channel 0 follows map 0, channel 1 the mean over maps 1 and 2 (mixed: any mix)."""
    x1 = [[0.3, -0.9], [-1.2, 0.4]]
    x2 = [[2.0, -0.5], [0.7, 1.5]]
    maps = [[0.9, 0.1], [0.2, 0.6], [0.5, 0.0]]
    x = torch.tensor(x1 + x2, dtype=torch.float64).view(1, 4, 1, 2)
    aah = torch.tensor(maps, dtype=torch.float64).view(1, 3, 1, 2)
    betas = [sig(sum(x1[0]) / 2), sig(sum(x1[1]) / 2), sig(sum(x1[1]) / 2)]  # attrs 1 and 2 share x1's channel 1
    alphas = [[sig(b * v) for v in m] for b, m in zip(betas, maps)]
    py_weight, weight = _weight(form, 2, 3)
    mult = _multiplier_by_hand(form, alphas, [[0], [1, 2]], py_weight)
    expected = x1 + [[v * m for v, m in zip(x2[c], mult[c])] for c in range(2)]
    out = asam(x, aah, form=form, weight=weight).view(4, 2).tolist()
    assert out == [pytest.approx(row, rel=1e-12) for row in expected]


@pytest.mark.parametrize("form", ["mean1", "residual"])
@pytest.mark.parametrize(("channels", "k"), [(64, 5), (32, 27)])  # wide; MobileNetV2 layer2 (grouped)
def test_mean_gain_is_one(form: str, channels: int, k: int) -> None:
    """x2 = 1, so the output's second half is M: its spatial mean is 1 in every channel, its contrast kept."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(3, channels // 2, 8, 4), torch.ones(3, channels // 2, 8, 4)], dim=1)
    aah = torch.rand(3, k, 8, 4)
    m = asam(x, aah, form=form)[:, channels // 2:]  # (3, C/2, 8, 4)
    torch.testing.assert_close(m.mean(dim=(2, 3)), torch.ones(3, channels // 2))
    assert (m.amax(dim=(2, 3)) > 1.02).all() and (m.amin(dim=(2, 3)) < 0.98).all()
    paper = asam(x, aah)[:, channels // 2:].mean(dim=(2, 3))
    assert ((paper > 0.5) & (paper < 0.75)).all()  # what mean1/residual undo: eq. 4's damping


@pytest.mark.parametrize("form", LEARNED)
@pytest.mark.parametrize(("channels", "k"), [(64, 5), (32, 27)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_learned_forms_start_as_the_identity_to_the_bit(form: str, channels: int, k: int, dtype) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, channels, 6, 3).to(dtype)
    x[0, -1, 0, 0] = -0.0  # signed zeros and tiny values survive too
    x[1, -1, 0, 0] = 1e-30
    module = ASAM(k, form=form, stage_channels={"layer2": channels})
    out = module(x, torch.rand(2, k, 3, 2) * 5, "layer2")
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float64: torch.int64}[dtype]
    assert out.dtype == dtype and torch.equal(out.view(bits), x.view(bits))


@pytest.mark.parametrize("form", LEARNED)
def test_gradients_reach_the_gate_and_the_mixing(form: str) -> None:
    torch.manual_seed(2)
    module = ASAM(5, form=form, stage_channels={"layer2": 16, "layer3": 32})
    x2, x3 = torch.randn(2, 16, 4, 2), torch.randn(2, 32, 2, 1)
    target = torch.randn(2, 16, 4, 2)
    loss = (module(x2, torch.rand(2, 5, 4, 2), "layer2") - target).square().sum()
    loss = loss + module(x3, torch.rand(2, 5, 2, 1), "layer3").sum()
    loss.backward()
    params = dict(module.named_parameters())
    assert set(params) == ({"gate.layer2", "gate.layer3"} if form == "gated" else {"mix.layer2", "mix.layer3"})
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    if form == "mixed":
        assert params["mix.layer2"].shape == (8, 5, 1, 1) and params["mix.layer3"].shape == (16, 5, 1, 1)
        assert (params["mix.layer2"].grad != 0).all()  # every channel may follow every map


def test_parameters_and_the_logged_values() -> None:
    for form in ("paper", "mean1", "residual"):
        module = ASAM(27, form=form)
        assert list(module.parameters()) == [] and module.state_dict() == {} and module.learned() == {}
    gated = ASAM(27, form="gated", stage_channels={"layer2": 32, "layer4": 1280})
    assert sum(p.numel() for p in gated.parameters()) == 2
    assert gated.learned() == {"asam_gate_layer2": 0.0, "asam_gate_layer4": 0.0}
    with torch.no_grad():
        gated.gate["layer4"].fill_(0.25)
    assert gated.learned()["asam_gate_layer4"] == 0.25
    mixed = ASAM(27, form="mixed", stage_channels={"layer2": 32, "layer3": 96, "layer4": 1280})
    assert sum(p.numel() for p in mixed.parameters()) == 27 * (16 + 48 + 640)  # MobileNetV2: 19,008
    with torch.no_grad():
        mixed.mix["layer3"][0, 0] = -4.8
    assert mixed.learned()["asam_mix_layer3"] == pytest.approx(4.8 / (48 * 27))
    assert "form='mixed'" in repr(mixed)


def test_gain_zero_makes_every_new_form_the_identity() -> None:
    """alpha = 0.5 everywhere, so alpha / mean(alpha) = 1: only the paper form keeps the damping control."""
    torch.manual_seed(3)
    x, aah = torch.randn(2, 16, 4, 2), torch.rand(2, 3, 4, 2)
    for form in ("mean1", "residual"):
        torch.testing.assert_close(asam(x, aah, gain=0.0, form=form), x)
    torch.testing.assert_close(asam(x, aah, gain=0.0, form="gated", weight=torch.tensor(3.0)), x)
    torch.testing.assert_close(asam(x, aah, gain=0.0)[:, 8:], 0.5 * x[:, 8:])


def test_form_errors() -> None:
    x, aah = torch.rand(1, 8, 2, 2), torch.rand(1, 2, 2, 2)
    with pytest.raises(ValueError, match="unknown ASAM form 'soft'"):
        asam(x, aah, form="soft")
    with pytest.raises(ValueError, match="'gated' needs a learned weight"):
        asam(x, aah, form="gated")
    with pytest.raises(ValueError, match="'mean1' takes no learned weight"):
        asam(x, aah, form="mean1", weight=torch.tensor(1.0))
    with pytest.raises(ValueError, match="needs the channels of each stage"):
        ASAM(2, form="mixed")
    with pytest.raises(ValueError, match=r"weights for \['layer2'\], not 'layer3'"):
        ASAM(2, form="gated", stage_channels={"layer2": 8})(x, aah, "layer3")


def test_config_choices_are_the_forms() -> None:
    from sangal.config import CHOICES, load_config

    assert CHOICES["model.asam_form"] == FORMS
    assert load_config(None, ["model.asam_form=mixed"]).model.asam_form == "mixed"
    assert load_config(None).model.asam_form == "residual"  # the real-crop study's san-gal default; paper: one flag
    assert load_config(None, ["model.asam_form=paper"]).model.asam_form == "paper"
