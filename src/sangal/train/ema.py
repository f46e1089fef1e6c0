"""An exponential moving average of a network's weights, used for evaluation (``train.ema``; 0 = off).

The average is bias-corrected as Adam corrects its moments: the shadow starts at zero,
``s_t = d s_{t-1} + (1 - d) w_t``, and the estimate is ``s_t / (1 - d^t)``. It is a weighted mean
of the weights after updates 1..t with weights proportional to ``d^(t-i)``, so nothing of the
initial (un-updated) network remains however short the run; the window is about ``1 / (1 - d)``
updates (0.9: the last ~10; at 0.99 a 70-step run averages nearly all its iterates).
Floating-point entries of the state dict are averaged (BatchNorm running statistics too);
integer ones (``num_batches_tracked``) follow the live network.

As a hook of the loop (:class:`sangal.train.hooks.Hook`) it folds in the network it was made for after every
optimizer step. Checkpoints hold the shadow and ``t`` (:meth:`WeightEMA.tensors`, :meth:`WeightEMA.state`), so a
resumed run continues the same average bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from sangal.errors import CheckpointError
from sangal.train.hooks import Hook

__all__ = ["WeightEMA", "ema_applied"]

PREFIX = "ema."


class WeightEMA(Hook):
    """Bias-corrected EMA of ``model``'s floating-point state dict entries."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema must be in (0, 1) (0 turns it off), got {decay}")
        self.model = model
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {name: torch.zeros_like(t) for name, t in model.state_dict().items()
                       if t.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the network's current weights into the average (call after each optimizer step)."""
        self.updates += 1
        for name, t in model.state_dict().items():
            if name in self.shadow:
                self.shadow[name].mul_(self.decay).add_(t.detach(), alpha=1.0 - self.decay)

    def after_update(self) -> None:
        self.update(self.model)

    def averaged(self, model: nn.Module) -> dict[str, Tensor]:
        """The bias-corrected average as a full state dict (integer entries from ``model``)."""
        if self.updates == 0:
            return {name: t.detach().clone() for name, t in model.state_dict().items()}
        scale = 1.0 / (1.0 - self.decay ** self.updates)
        return {name: self.shadow[name] * scale if name in self.shadow else t.detach().clone()
                for name, t in model.state_dict().items()}

    def tensors(self) -> dict[str, Tensor]:
        """The shadow, for a checkpoint's tensors (names prefixed ``ema.``)."""
        return {PREFIX + name: t for name, t in self.shadow.items()}

    def state(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates}

    def load(self, tensors: Mapping[str, Tensor] | None, state: Mapping[str, Any] | None,
             where: str = "the checkpoint") -> None:
        """Restore what :meth:`tensors` and :meth:`state` saved; CheckpointError if they do not fit."""
        if not tensors or not state:
            raise CheckpointError(f"{where} holds no weight EMA (it was saved with train.ema=0); resume with "
                                  "train.ema=0 or start the run again")
        if float(state["decay"]) != self.decay:
            raise CheckpointError(f"{where}: its weight EMA has decay {state['decay']}, but train.ema is "
                                  f"{self.decay}; resume with train.ema={state['decay']}")
        missing = [n for n in self.shadow if PREFIX + n not in tensors]
        if missing:
            raise CheckpointError(f"{where}: its weight EMA lacks {', '.join(missing[:3])}")
        for name, t in self.shadow.items():
            t.copy_(tensors[PREFIX + name])
        self.updates = int(state["updates"])


@contextmanager
def _swapped(model: nn.Module, ema: WeightEMA) -> Iterator[None]:
    live = {name: t.detach().clone() for name, t in model.state_dict().items()}
    model.load_state_dict(ema.averaged(model))
    try:
        yield
    finally:
        model.load_state_dict(live)


def ema_applied(ema: WeightEMA | None, model: nn.Module):
    """Context in which ``model`` holds the averaged weights (restored after); a no-op without an EMA."""
    return nullcontext() if ema is None else _swapped(model, ema)
