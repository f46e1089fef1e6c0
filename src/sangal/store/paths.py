"""Where each stage of a run reads and writes: the folder layout under ``out``."""

from __future__ import annotations

from pathlib import Path

from sangal.config import Config

__all__ = ["default_paths"]


def default_paths(cfg: Config) -> dict[str, Path]:
    """Where each stage of a run reads and writes, derived from `out` unless configured."""
    out = Path(cfg.out)
    return {
        "out": out,
        "attr_run": out / "attr",
        "attr_checkpoint": Path(cfg.train.attr_checkpoint) if cfg.train.attr_checkpoint
        else out / "attr" / "checkpoints" / "final",
        "aah": Path(cfg.train.aah_cache) if cfg.train.aah_cache else out / "aah",
        "reid_run": out / "reid" / cfg.model.mode,
    }
