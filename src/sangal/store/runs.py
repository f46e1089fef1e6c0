"""A run folder is never clobbered: a new run refuses a folder that holds one, ``--resume`` refuses a changed config.

A run folder (``<out>/attr``, ``<out>/reid/<mode>``, :func:`sangal.store.paths.default_paths`) holds
``checkpoints/`` (``last`` while it trains, ``final`` once done), ``metrics.json``, ``config.yaml`` and
``tensorboard/``. :func:`sangal.train.lifecycle.run_training` holds :func:`run_folder` (one writer per folder,
the index's lock; then :func:`guard_run_folder`) for the whole run, and the tasks call :func:`check_resume_config`
once they have read the checkpoint they resume.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sangal.config import Config, to_dict
from sangal.errors import ConfigError
from sangal.store.files import output_lock, recover_aside

__all__ = ["RESUME_FREE", "RUN_FILES", "check_resume_config", "guard_run_folder", "run_folder"]

logger = logging.getLogger(__name__)

#: What ``--overwrite`` deletes from a run folder (anything else in it is left alone).
RUN_FILES = ("checkpoints", "metrics.json", "config.yaml", "tensorboard")

#: Config keys a resumed run may change, because they never change what it computes: where it runs
#: (``out``, ``train.device``), DataLoader workers (augmentation is seeded per sample), logging,
#: evaluation and checkpoint frequency (neither draws from the training RNG; a kill and resume is
#: bit-identical), and the number of epochs (the schedule does not depend on it, so a longer run goes on
#: exactly as one started with the new value would), and how a study schedules its runs (``study.workers``).
RESUME_FREE = frozenset({"out", "train.device", "data.num_workers", "train.log_every", "train.eval_every",
                         "train.checkpoint_every", "train.epochs", "attr_train.epochs", "study.workers"})
_SHOWN = 6


@contextmanager
def run_folder(run_dir: str | Path | None, overwrite: bool, resume: bool = False) -> Iterator[None]:
    """Hold ``run_dir``'s writer lock (``.NAME.lock`` beside it, as an index's) while a run trains into it, after
    :func:`guard_run_folder`. A folder another live process trains into is refused in one line (BusyError) before
    the guard, so it is never called interrupted and ``--overwrite`` never deletes it. None: no folder, no lock."""
    if run_dir is None:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(run_dir, wait=False):
        guard_run_folder(run_dir, overwrite, resume)
        yield


def guard_run_folder(run_dir: str | Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to start a run in ``run_dir`` when it holds one, finished or interrupted, unless ``resume``
    (continue it) or ``overwrite`` (its RUN_FILES are deleted first)."""
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other: continue the run or replace it")
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    for name in ("final", "last"):
        recover_aside(checkpoints / name)  # a checkpoint save killed between its two renames
    found = [checkpoints / name for name in ("final", "last") if (checkpoints / name).is_dir()]
    if resume or not found:
        return
    if overwrite:
        logger.warning("--overwrite: deleting the run in %s", run_dir)
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    if found[0].name == "final":
        raise ConfigError(f"{run_dir} holds a finished run ({found[0]}); pass --overwrite to replace it, or train "
                          f"into another out=")
    raise ConfigError(f"{run_dir} holds an interrupted run ({found[0]}); pass --resume to continue it, --overwrite "
                      f"to replace it, or train into another out=")


def check_resume_config(saved: Mapping[str, Any] | None, current: Mapping[str, Any], source: str | Path) -> None:
    """Refuse to resume from ``source`` when its ``saved`` config differs from ``current`` in a key that
    changes what the run computes (all but RESUME_FREE), listing the keys. ``saved`` None: nothing recorded.

    A key an older version did not record counts as its default value.
    """
    if saved is None:
        return
    old = {**_flat(to_dict(Config())), **_flat(saved)}
    new = _flat(current)
    changed = [k for k in new if k not in RESUME_FREE and old.get(k, new[k]) != new[k]]
    if changed:
        shown = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed[:_SHOWN])
        more = f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
        raise ConfigError(f"--resume: {source} was trained with another config ({shown}{more}); resume with the "
                          f"saved values, or start a new run with another out= or --overwrite")


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out
