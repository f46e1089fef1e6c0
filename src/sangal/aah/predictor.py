"""The distilled map predictor on disk: ``map_predictor.safetensors`` inside an attribute checkpoint.

Fitted by :mod:`sangal.train.distill`, read by fast heat maps (cache build, evaluation, search, export).
The file binds itself to the attribute weights it was fitted to (their sha256 in its metadata), and
fast AAH caches bind themselves to the file's own sha256 (:func:`predictor_sha256`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch

from sangal.errors import CheckpointError
from sangal.models.map_predictor import MapPredictor
from sangal.store.checkpoint import MODEL_FILE
from sangal.store.files import file_sha256, provenance, save_safetensors

__all__ = ["DISTILL_HINT", "PREDICTOR_FILE", "load_map_predictor", "predictor_sha256", "save_map_predictor"]

PREDICTOR_FILE = "map_predictor.safetensors"
DISTILL_HINT = "run `sangal distill` (after `sangal aah`) or use eval.aah=exact"


def save_map_predictor(attr_ckpt_dir: str | Path, predictor: MapPredictor, info: dict[str, Any]) -> Path:
    """Write ``predictor`` into the attribute checkpoint directory (temp file + rename)."""
    directory = Path(attr_ckpt_dir)
    meta = {"config": predictor.config(), "attr_sha256": file_sha256(directory / MODEL_FILE),
            **info, **provenance()}
    path = directory / PREDICTOR_FILE
    tmp = path.with_name(f".{PREDICTOR_FILE}.tmp-{uuid.uuid4().hex[:8]}")
    weights = {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}
    save_safetensors(tmp, weights, {"sangal": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_map_predictor(attr_ckpt_dir: str | Path, device: str | torch.device = "cpu") -> MapPredictor:
    """The distilled predictor of an attribute checkpoint, in eval mode.

    Raises:
        CheckpointError: no predictor saved, or one fitted to other attribute weights.
    """
    from safetensors import safe_open

    directory = Path(attr_ckpt_dir)
    path = directory / PREDICTOR_FILE
    if not path.is_file():
        raise CheckpointError(f"attribute checkpoint {directory} has no distilled map predictor ({PREDICTOR_FILE}), "
                              f"which fast heat maps need; {DISTILL_HINT}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})["sangal"])
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own error types, a missing/invalid metadata entry
        raise CheckpointError(f"{path} is corrupt or not a sangal map predictor ({exc}); {DISTILL_HINT}") from exc
    now = file_sha256(directory / MODEL_FILE)
    if meta.get("attr_sha256") != now:
        raise CheckpointError(f"{path} was distilled for other attribute weights (sha256 "
                              f"{str(meta.get('attr_sha256'))[:12]}…, the checkpoint now has {now[:12]}…); "
                              f"{DISTILL_HINT}")
    cfg = meta["config"]
    predictor = MapPredictor(tuple(cfg["stage_channels"]), cfg["num_logits"], cfg["hidden"])
    predictor.load_state_dict(weights)
    predictor.meta = meta  # type: ignore[attr-defined]
    return predictor.to(device).eval()


def predictor_sha256(attr_ckpt_dir: str | Path) -> str | None:
    """sha256 of the saved predictor file, or None (binds fast AAH caches to it)."""
    path = Path(attr_ckpt_dir) / PREDICTOR_FILE
    return file_sha256(path) if path.is_file() else None
