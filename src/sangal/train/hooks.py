"""What runs beside the loop at fixed points (fast-reid's ``HookBase``): weight EMA, periodic evaluation, early
stopping. A task lists its hooks in ``Task.hooks``; :func:`sangal.train.engine.run_task` calls them."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["EarlyStopping", "Hook", "PeriodicEvaluation"]

log = logging.getLogger(__name__)


class Hook:
    """One concern beside the loop; the loop calls each method at its point of the schedule."""

    def after_update(self) -> None:
        """After every optimizer step (e.g. a weight EMA's update)."""

    def end_epoch(self, epoch: int) -> bool:
        """At the end of epoch ``epoch`` (1-based count of epochs done), before its checkpoint: True stops."""
        return False


class PeriodicEvaluation(Hook):
    """``evaluate(epoch)`` every ``every`` epochs (0: never), except after the last, which the run's final
    evaluation covers; on the main rank only."""

    def __init__(self, evaluate: Callable[[int], Any], every: int, epochs: int, is_main: bool = True) -> None:
        self.evaluate, self.every, self.epochs, self.is_main = evaluate, every, epochs, is_main

    def end_epoch(self, epoch: int) -> bool:
        if self.every > 0 and epoch % self.every == 0 and epoch < self.epochs and self.is_main:
            self.evaluate(epoch)
        return False


class EarlyStopping(Hook):
    """Stop once ``score()`` (higher is better) has not risen by ``min_delta`` for ``patience`` epochs; keeps the
    best epoch's weights of ``model`` (``best["weights"]``, None until an epoch improved)."""

    def __init__(self, model: torch.nn.Module, score: Callable[[], float], patience: int,
                 min_delta: float = 0.0) -> None:
        self.model, self.score, self.patience, self.min_delta = model, score, patience, min_delta
        self.best: dict[str, Any] = {"score": -math.inf, "epoch": 0, "weights": None}

    def end_epoch(self, epoch: int) -> bool:
        score = self.score()
        if score > self.best["score"] + self.min_delta:
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"score": score, "epoch": epoch, "weights": weights}
        log.info("epoch %d: held-out score %.4f (best %.4f, epoch %d)", epoch, score, self.best["score"],
                 self.best["epoch"])
        return epoch - self.best["epoch"] >= self.patience
