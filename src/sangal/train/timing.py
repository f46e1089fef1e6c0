"""Timing the one training loop, for the benchmarks: what they report per step is :func:`run_task`'s step
(autocast and GradScaler, finite-loss check, zero_grad, backward, optimizer step, hooks), not a loop of their own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from sangal.train.engine import LoopSettings, Schedule, Task, run_task
from sangal.train.hooks import Hook
from sangal.train.run_parts import Position, RunLogger

__all__ = ["timed_steps"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock(Hook):
    """Starts after the ``warm``-th update (0: when started), device synchronised."""

    def __init__(self, warm: int, device: torch.device) -> None:
        self.warm, self.device, self.updates, self.start = warm, device, 0, 0.0
        if warm == 0:
            self.begin()

    def begin(self) -> None:
        _sync(self.device)
        self.start = time.perf_counter()

    def after_update(self) -> None:
        self.updates += 1
        if self.updates == self.warm:
            self.begin()


class _Repeated(Task):
    """The batches of ``batches()`` through ``loss``: named terms with ``"total"``."""

    name = "timing"

    def __init__(self, loss: Callable[[Any], dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                 batches: Callable[[], Iterable], clock: _Clock) -> None:
        self.loss, self.optimizer, self.source, self.hooks = loss, optimizer, batches, (clock,)

    def batches(self, epoch: int, start: int) -> Iterable:
        return self.source()

    def step(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor]:
        return self.loss(batch)


def timed_steps(loss: Callable[[Any], dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                batches: Callable[[], Iterable], device: torch.device, steps: int, warm: int = 0,
                amp: bool = False) -> float:
    """Seconds per step of ``steps`` steps of the one loop, after ``warm`` untimed ones, at the optimizer's
    learning rate; ``batches()`` yields at least ``warm + steps`` batches, ``loss(batch)`` runs under the loop's
    autocast (``amp``: bf16 on CPU, fp16 with a GradScaler on CUDA)."""
    clock = _Clock(warm, device)
    task = _Repeated(loss, optimizer, batches, clock)
    lr = optimizer.param_groups[0]["lr"]
    settings = LoopSettings(device, amp=amp, log_every=10**9, is_main=False)  # no bar, no per-step log sync
    run_task(task, Schedule(1, warm + steps, lambda progress: lr), settings, RunLogger(Path("."), enabled=False),
             Position())
    _sync(device)
    return (time.perf_counter() - clock.start) / steps
