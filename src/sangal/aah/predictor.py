"""The distilled map predictor on disk: ``map_predictor.safetensors`` inside an attribute checkpoint.

Fitted by :mod:`sangal.train.distill`, read by fast heat maps (cache build, evaluation, search, export).
The file binds itself to the attribute weights it was fitted to (their sha256 in its metadata), and
fast AAH caches bind themselves to the file's own sha256 (:func:`predictor_sha256`), which
``map_predictor.json`` beside it records and loading checks (a predictor without its record is refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sangal.errors import CheckpointError
from sangal.models.arch import build_model
from sangal.models.map_predictor import MapPredictor
from sangal.store.checkpoint import MODEL_FILE
from sangal.store.files import (
    atomic_file,
    atomic_write_text,
    cached_sha256,
    file_sha256,
    provenance,
    save_safetensors,
    verify_sha256,
)

__all__ = ["DISTILL_HINT", "PREDICTOR_FILE", "PREDICTOR_RECORD", "load_map_predictor", "predictor_sha256",
           "save_map_predictor"]

PREDICTOR_FILE = "map_predictor.safetensors"
PREDICTOR_RECORD = "map_predictor.json"  # {"sha256": ...} of PREDICTOR_FILE, written after it
DISTILL_HINT = "run `sangal distill` (after `sangal aah`) or use eval.aah=exact"


def save_map_predictor(attr_ckpt_dir: str | Path, predictor: MapPredictor, info: dict[str, Any]) -> Path:
    """Write ``predictor`` into the attribute checkpoint directory (temp file + rename)."""
    directory = Path(attr_ckpt_dir)
    meta = {"config": predictor.config(), "attr_sha256": cached_sha256(directory / MODEL_FILE),
            **info, **provenance()}
    path = directory / PREDICTOR_FILE
    weights = {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}
    with atomic_file(path) as tmp:
        save_safetensors(tmp, weights, {"sangal": json.dumps(meta)})
        digest = file_sha256(tmp)
    atomic_write_text(directory / PREDICTOR_RECORD, json.dumps({"sha256": digest, "file": PREDICTOR_FILE}))
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
    _verify(directory)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})["sangal"])
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own error types, a missing/invalid metadata entry
        raise CheckpointError(f"{path} is corrupt or not a sangal map predictor ({exc}); {DISTILL_HINT}") from exc
    now = cached_sha256(directory / MODEL_FILE)
    if meta.get("attr_sha256") != now:
        raise CheckpointError(f"{path} was distilled for other attribute weights (sha256 "
                              f"{str(meta.get('attr_sha256'))[:12]}…, the checkpoint now has {now[:12]}…); "
                              f"{DISTILL_HINT}")
    cfg = meta["config"]
    predictor = build_model({"kind": "map_predictor", **cfg})
    try:
        predictor.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit its own recorded shape ({str(exc).splitlines()[0]}); "
                              f"{DISTILL_HINT}") from exc
    predictor.meta = meta  # type: ignore[attr-defined]
    return predictor.to(device).eval()


def _verify(directory: Path) -> None:
    """The predictor file against the sha256 its record holds; a predictor without its record is refused, as a
    checkpoint without its state.json is (nothing would say whether its bytes are the ones written)."""
    record = directory / PREDICTOR_RECORD
    if not record.is_file():
        raise CheckpointError(f"{record} is missing, so {PREDICTOR_FILE} beside it cannot be checked against the "
                              f"sha256 recorded when it was written; {DISTILL_HINT}")
    try:
        expected = str(json.loads(record.read_text(encoding="utf-8"))["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{record} is unreadable ({exc}); {DISTILL_HINT}") from exc
    verify_sha256(directory / PREDICTOR_FILE, expected, CheckpointError, DISTILL_HINT)


def predictor_sha256(attr_ckpt_dir: str | Path) -> str | None:
    """sha256 of the saved predictor file, or None (binds fast AAH caches to it)."""
    path = Path(attr_ckpt_dir) / PREDICTOR_FILE
    return cached_sha256(path) if path.is_file() else None
