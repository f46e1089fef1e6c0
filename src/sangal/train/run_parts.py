"""The parts a training run is built of, used by the one loop (:mod:`sangal.train.engine`), the run around it
(:mod:`sangal.train.lifecycle`) and the tasks: the learning-rate schedule, the optimizer, the resume read and the
step position, the finite-loss check, the stop signal and the run log."""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sangal.store.files import write_json_atomic

log = logging.getLogger(__name__)


def warmup_step_lr(
    progress: float,
    base_lr: float,
    warmup_start_lr: float,
    warmup_epochs: float,
    milestones: list[int],
    milestone_lrs: list[float],
) -> float:
    """LR at fractional epoch `progress`: linear warmup, then piecewise constant (§4.1.3).

    With the paper's values: 3e-5 -> 1e-3 over the warmup, then 5e-4 / 1e-4 / 3e-5
    from epochs 5 / 7 / 15.
    """
    lr = base_lr
    for milestone, value in zip(milestones, milestone_lrs):
        if progress >= milestone:
            lr = value
    if warmup_epochs > 0 and progress < warmup_epochs:
        return warmup_start_lr + (base_lr - warmup_start_lr) * progress / warmup_epochs
    return lr


@dataclass
class Position:
    """Where a training run stands: the schedule position a checkpoint records."""

    epoch: int = 0
    step: int = 0  # next batch within `epoch`
    global_step: int = 0
    history: dict | None = None
    extra: dict = field(default_factory=dict)  # the rest of state.json (e.g. train_reid's batch_digest)


def resume_from(last_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, arch: dict,
                kind: str):
    """Load `last_dir` into model, optimizer and the RNGs; returns (checkpoint, Position)."""
    from sangal.errors import CheckpointError
    from sangal.store.checkpoint import load_checkpoint, load_weights, restore_optimizer, restore_rng_state

    if not Path(last_dir).exists():
        raise CheckpointError(f"--resume: no checkpoint at {last_dir}; start without --resume")
    ckpt = load_checkpoint(last_dir, expected_kind=kind)
    load_weights(model, ckpt, arch)
    restore_optimizer(optimizer, ckpt)
    restore_rng_state(ckpt.state["rng"])
    state = ckpt.state
    log.info("resuming %s at epoch %d step %d", last_dir, state["epoch"], state["step"])
    return ckpt, Position(state["epoch"], state["step"], state["global_step"], state.get("history"), dict(state))


def make_optimizer(groups: list[dict] | list[torch.nn.Parameter], name: str, lr: float, weight_decay: float,
                   momentum: float = 0.9, nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or Adam, both with L2 weight decay; the schedule sets the lr per step.

    Adam is what BoT/fast-reid fine-tune ImageNet backbones with; SGD is the paper's (§4.1.3).
    """
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name != "sgd":
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def check_finite(losses: dict[str, torch.Tensor], epoch: int, step: int) -> None:
    """Stop at the first non-finite loss, before its backward: the last checkpoint written is the last good one."""
    from sangal.errors import NonFiniteError

    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"training stopped at epoch {epoch} step {step}: loss term '{name}' is "
                                 f"{value.item()}; nothing after the last checkpoint was saved; lower the learning "
                                 "rate or check the data")


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (then checkpoints and exits)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: finishing this step, writing a checkpoint, then exiting",
                    signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def stop(self) -> bool:
        return self.received is not None


class RunLogger:
    """TensorBoard scalars + a metrics.json history for one run folder (main rank only)."""

    def __init__(self, run_dir: Path, enabled: bool = True, history: dict | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.history: dict[str, Any] = history or {"train": [], "eval": [], "started": time.time()}
        self._writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception as exc:  # tensorboard is optional at run time
                log.warning("TensorBoard logging disabled: %s", exc)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def record(self, kind: str, entry: dict) -> None:
        if not self.enabled:
            return
        self.history.setdefault(kind, []).append(entry)
        self.flush()

    def flush(self) -> None:
        if self.enabled:
            write_json_atomic(self.run_dir / "metrics.json", self.history)
            if self._writer is not None:
                self._writer.flush()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
