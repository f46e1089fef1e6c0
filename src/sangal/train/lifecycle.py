"""The run around the loop, once for every task (torchreid's ``Engine.run``, fast-reid's ``DefaultTrainer``).

:func:`run_training` owns the run folder (one writer, :func:`sangal.store.runs.run_folder`), the resume rule,
logging, the stop, the final save and the final evaluation; :func:`sangal.train.engine.run_task` is the loop
inside it. **The resume rule**, one for the attribute net, the Re-ID net and the distillation: a folder that
holds a run is continued only with ``resume`` (``--resume``) and replaced only with ``overwrite``
(``--overwrite``); otherwise it is refused in one line. The unattended drivers (``sangal study``, the demo's
distillation) ask to resume when the folder holds a ``last`` checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sangal.store.files import atomic_write_text
from sangal.store.runs import run_folder
from sangal.train.engine import Stopped, Task, run_task
from sangal.train.run_parts import RunLogger

__all__ = ["RunOptions", "run_training"]


@dataclass(frozen=True)
class RunOptions:
    """How a run treats its folder and when it stops early (``stop_after_steps``: as a kill would, for tests)."""

    resume: bool = False
    overwrite: bool = False
    stop_after_steps: int | None = None


def run_training(make_task: Callable[[bool], Task], run_dir: Path | None, options: RunOptions = RunOptions(),
                 is_main: bool = True) -> dict:
    """Build the task (``make_task(resume)``, after the folder is claimed), train it to the end of its schedule,
    save ``final`` (with the task's final weights, e.g. its EMA) and return its final evaluation.

    ``run_dir`` None: no folder, lock, log or config file (the task's ``save`` decides what it writes).
    ``is_main``: the rank that claims the folder, logs and writes (the others train beside it).

    Raises:
        Stopped: a signal or ``stop_after_steps``; the ``last`` checkpoint is written and the message names it.
        NonFiniteError: a non-finite loss or weights; the checkpoint written before it is kept.
    """
    with run_folder(run_dir if is_main else None, options.overwrite, options.resume):
        task = make_task(options.resume)
        enabled = is_main and run_dir is not None
        task.logger = logger = RunLogger(run_dir or Path("."), enabled=enabled, history=task.position.history)
        try:
            if enabled:
                _write_config(task, run_dir)
            try:
                end = run_task(task, task.schedule(), task.loop_settings(), logger, task.position,
                               options.stop_after_steps)
            except Stopped as stopped:
                where = run_dir / "checkpoints" / "last" if run_dir is not None else ""
                raise Stopped(stopped.position, stopped.signal, str(where)) from None
            with task.final_weights():
                task.save(end, name="final")
            return task.final_evaluation(end)
        finally:
            logger.close()


def _write_config(task: Task, run_dir: Path) -> None:
    """``config.yaml`` of the run (the resolved config), when the task has one."""
    text = task.config_yaml()
    run_dir.mkdir(parents=True, exist_ok=True)
    if text is not None:
        atomic_write_text(run_dir / "config.yaml", text)

