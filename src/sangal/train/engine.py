"""The one training loop (torchreid's ``Engine``): what varies between trainings is a :class:`Task`'s step.

The attribute net (:mod:`sangal.train.attr`), the Re-ID net (:mod:`sangal.train.reid`) and the map-predictor
distillation (:mod:`sangal.train.distill`) all run on :func:`run_task`, which owns, once for all three: the
learning rate of every step (:class:`Schedule`), autocast (bf16 on CPU; fp16 with a GradScaler on CUDA),
zeroing, backward and the optimizer step, the finite-loss check (and no checkpoint of non-finite weights),
rolling and epoch-end checkpoints, the SIGINT/SIGTERM stop (checkpoint, then :class:`Stopped`), the task's
hooks (:mod:`sangal.train.hooks`) and logging. This is the only module that steps an optimizer. The run around
it (folder, resume, final save and evaluation) is :func:`sangal.train.lifecycle.run_training`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from sangal.errors import NonFiniteError, SangalError
from sangal.runtime.precision import autocast
from sangal.train.hooks import Hook
from sangal.train.run_parts import Position, RunLogger, StopSignal, check_finite, set_lr, warmup_step_lr

__all__ = ["LoopSettings", "Schedule", "Stopped", "Task", "run_task", "step_schedule"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Epochs, steps per epoch, and the learning rate at a fractional epoch (``epoch + step / steps``)."""

    epochs: int
    steps: int
    lr: Callable[[float], float]


def step_schedule(epochs: int, steps: int, lr: float, warmup_start_lr: float, warmup_epochs: float,
                  milestones: list[int] | tuple[int, ...] = (), milestone_lrs: list[float] | tuple[float, ...] = ()
                  ) -> Schedule:
    """Linear warmup from ``warmup_start_lr`` to ``lr``, then piecewise constant (§4.1.3)."""
    return Schedule(epochs, steps, lambda progress: warmup_step_lr(progress, lr, warmup_start_lr, warmup_epochs,
                                                                   list(milestones), list(milestone_lrs)))


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs, whatever it trains."""

    device: torch.device
    amp: bool = False  # autocast: bf16 on CPU, fp16 (with a GradScaler) on CUDA
    checkpoint_every: int = 0  # steps between rolling checkpoints (0: epoch ends only)
    log_every: int = 20
    is_main: bool = True  # the rank that logs, draws the progress bar and (in the task) saves


class Stopped(SangalError):
    """The loop stopped before its last epoch (a signal or ``stop_after_steps``); the checkpoint is written.
    ``str()`` is one line naming the checkpoint to resume from (``where``); a signal's stop exits 130."""

    def __init__(self, position: Position, signal: int | None, where: str = "") -> None:
        import signal as signals

        cause = f"by {signals.Signals(signal).name} " if signal is not None else ""
        resume = f"; resume with --resume ({where})" if where else ""
        super().__init__(f"stopped {cause}at epoch {position.epoch} step {position.step}, checkpoint written{resume}")
        self.position, self.signal, self.where = position, signal, where
        self.exit_code = 130 if signal is not None else 2


def saved_optimizer(optimizer: torch.optim.Optimizer, name: str) -> torch.optim.Optimizer | None:
    """The optimizer a checkpoint called ``name`` stores: none in ``final``, which is for use (resume reads
    ``last``), so a finished run does not keep a second copy of the optimizer state."""
    return None if name == "final" else optimizer


class Task:
    """One training: its optimizer, batches and loss. Subclasses override :meth:`batches` and :meth:`step`;
    :func:`sangal.train.lifecycle.run_training` also reads ``position`` (where a resumed run starts),
    :meth:`schedule`, :meth:`loop_settings` and the final-stage methods, and sets ``logger``."""

    name = "train"
    optimizer: torch.optim.Optimizer
    hooks: tuple[Hook, ...] = ()  # EMA, periodic evaluation, early stopping (sangal.train.hooks)
    position: Position = Position()
    logger: RunLogger | None = None

    def schedule(self) -> Schedule:
        """The run's epochs, steps per epoch and learning rates."""
        raise NotImplementedError

    def loop_settings(self) -> LoopSettings:
        """Device, autocast, checkpoint and log frequency of the loop."""
        raise NotImplementedError

    def config_yaml(self) -> str | None:
        """The resolved config the run folder keeps as ``config.yaml`` (None: none)."""
        return None

    def final_weights(self) -> contextlib.AbstractContextManager:
        """The context in which the model holds the weights the final checkpoint saves (e.g. its EMA)."""
        return contextlib.nullcontext()

    def final_evaluation(self, position: Position) -> dict:
        """The run's result, once the final checkpoint is saved."""
        return {}

    def batches(self, epoch: int, start: int) -> Iterable:
        """The epoch's batches from step ``start`` on (set models to train mode here)."""
        raise NotImplementedError

    def step(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch, ``"total"`` among them (runs under the loop's autocast)."""
        raise NotImplementedError

    def save(self, position: Position, name: str = "last") -> None:
        """Write a checkpoint of everything needed to resume at ``position``."""

    def end_epoch(self, position: Position) -> None:
        """The task's own bookkeeping at an epoch's end, before the hooks' and the checkpoint."""

    def log_values(self) -> dict[str, float]:
        """Extra scalars logged with the loss (e.g. learned gates)."""
        return {}


def run_task(task: Task, schedule: Schedule, settings: LoopSettings, logger: RunLogger, position: Position,
             stop_after_steps: int | None = None) -> Position:
    """Train ``task`` from ``position`` to the end of the schedule; the final position (not yet saved as final).

    Raises:
        Stopped: after a stop signal or ``stop_after_steps`` steps, once the checkpoint is written.
        NonFiniteError: a non-finite loss term, or non-finite weights where a checkpoint was due (none written).
    """
    device = settings.device
    scaler = torch.amp.GradScaler(device.type, enabled=settings.amp and device.type == "cuda")
    pos = Position(position.epoch, position.step, position.global_step, position.history, position.extra)
    with StopSignal() as stop:
        while pos.epoch < schedule.epochs:
            bar = tqdm(total=schedule.steps, initial=pos.step, leave=False, dynamic_ncols=True,
                       desc=f"{task.name} epoch {pos.epoch + 1}/{schedule.epochs}", disable=not settings.is_main)
            for step, batch in zip(range(pos.step, schedule.steps), task.batches(pos.epoch, pos.step)):
                set_lr(task.optimizer, schedule.lr(pos.epoch + step / schedule.steps))
                with autocast(device, settings.amp):
                    terms = task.step(batch, pos.epoch, step)
                check_finite(terms, pos.epoch, step)
                task.optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(task.optimizer)
                scaler.update()
                for hook in task.hooks:
                    hook.after_update()
                pos.step, pos.global_step = step + 1, pos.global_step + 1
                bar.update(1)
                _log(task, logger, settings, bar, terms, pos, last=step == schedule.steps - 1)
                if stop.stop or (stop_after_steps is not None and pos.global_step >= stop_after_steps):
                    bar.close()
                    _save(task, pos)
                    raise Stopped(pos, stop.received)
                if settings.checkpoint_every > 0 and pos.global_step % settings.checkpoint_every == 0:
                    _save(task, pos)
            bar.close()
            pos.epoch, pos.step = pos.epoch + 1, 0
            task.end_epoch(pos)  # the task's and the hooks' before the checkpoint: a resumed run has what they did
            done = [hook.end_epoch(pos.epoch) for hook in task.hooks]
            _save(task, pos)
            if any(done):
                break
    return pos


def _save(task: Task, pos: Position) -> None:
    """``task.save(pos)``, refused when a weight or buffer is non-finite (``save_checkpoint`` checks every tensor):
    the last checkpoint written stays the last good one."""
    bad = sum(not bool(torch.isfinite(p).all()) for group in task.optimizer.param_groups for p in group["params"])
    try:
        if bad:
            raise NonFiniteError(f"{bad} weight tensors are non-finite, so no checkpoint was written")
        task.save(pos)
    except NonFiniteError as exc:
        raise NonFiniteError(f"training stopped at epoch {pos.epoch} step {pos.step}: {exc} (the last one is kept); "
                             "lower the learning rate") from None


def _log(task: Task, logger: RunLogger, settings: LoopSettings, bar, terms: dict, pos: Position, last: bool) -> None:
    """Every ``log_every`` steps and at an epoch's last step: TensorBoard scalars, metrics.json, the bar."""
    if not (pos.global_step % max(settings.log_every, 1) == 0 or last):
        return
    values = {k: float(v.detach()) for k, v in terms.items()}
    values["lr"] = task.optimizer.param_groups[0]["lr"]
    values.update(task.log_values())
    logger.scalars("train", values, pos.global_step)
    logger.record("train", {"epoch": pos.epoch, "step": pos.step - 1, "global_step": pos.global_step, **values})
    bar.set_postfix({k: f"{v:.3f}" for k, v in values.items() if k != "lr"})
