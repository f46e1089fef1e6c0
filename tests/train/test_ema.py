"""The weight EMA used for evaluation (train.ema): the bias-corrected average, swapping it in and out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sangal.errors import CheckpointError
from sangal.train.ema import WeightEMA, ema_applied


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _set_weights(net: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
        net[1].running_mean.fill_(value)
        net[1].num_batches_tracked.fill_(int(value))


def test_the_average_is_bias_corrected_over_the_updates_only() -> None:
    net, d = _net(), 0.5
    ema = WeightEMA(net, d)
    for value in (1.0, 2.0, 4.0):  # iterates w_1, w_2, w_3 (the initial weights must not count)
        _set_weights(net, value)
        ema.update(net)
    weights = [d ** 2 * (1 - d), d * (1 - d), 1 - d]  # (1-d) d^(t-i)
    expected = sum(w * v for w, v in zip(weights, (1.0, 2.0, 4.0))) / (1 - d ** 3)  # = 20/7
    avg = ema.averaged(net)
    assert torch.allclose(avg["0.weight"], torch.full((2, 3), expected))
    assert torch.allclose(avg["1.running_mean"], torch.full((2,), expected))
    assert avg["1.num_batches_tracked"].item() == 4  # integers follow the live net


def test_applied_swaps_the_average_in_and_restores_the_live_weights_exactly() -> None:
    net = _net()
    ema = WeightEMA(net, 0.9)
    for value in (0.3, 0.7):
        _set_weights(net, value)
        ema.update(net)
    live = {k: v.clone() for k, v in net.state_dict().items()}
    with ema_applied(ema, net):
        inside = net.state_dict()["0.weight"].clone()
    assert not torch.equal(inside, live["0.weight"])
    assert torch.allclose(inside, ema.averaged(net)["0.weight"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, live[k]), k
    with ema_applied(None, net):  # train.ema=0: a no-op
        assert torch.equal(net.state_dict()["0.weight"], live["0.weight"])


def test_load_continues_the_same_average_and_refuses_a_mismatch() -> None:
    net = _net()
    a = WeightEMA(net, 0.8)
    _set_weights(net, 1.5)
    a.update(net)
    b = WeightEMA(net, 0.8)
    b.load(a.tensors(), a.state(), where="ckpt")
    _set_weights(net, 0.25)
    a.update(net)
    b.update(net)
    assert all(torch.equal(x, y) for x, y in zip(a.averaged(net).values(), b.averaged(net).values()))
    with pytest.raises(CheckpointError, match="ckpt holds no weight EMA"):
        b.load(None, None, where="ckpt")
    with pytest.raises(CheckpointError, match="decay 0.8, but train.ema is 0.9"):
        WeightEMA(net, 0.9).load(a.tensors(), a.state(), where="ckpt")
