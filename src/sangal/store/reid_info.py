"""What a Re-ID checkpoint records about how it was trained: input size and the heat maps it expects.

Embedding (:mod:`sangal.search.embed`) and ONNX export read these so that test-time maps match training.
"""

from __future__ import annotations

from sangal.errors import CheckpointError
from sangal.store.checkpoint import Checkpoint

__all__ = ["aah_agnostic", "aah_normalize", "input_size"]


def input_size(ckpt: Checkpoint) -> tuple[int, int]:
    """(height, width) the model was trained at (arch, else the stored config)."""
    arch, config = ckpt.arch, ckpt.state.get("config") or {}
    data = config.get("data", {}) if isinstance(config, dict) else {}
    height, width = arch.get("height", data.get("height")), arch.get("width", data.get("width"))
    if not height or not width:
        raise CheckpointError(f"checkpoint {ckpt.path}: arch records no input height/width")
    return int(height), int(width)


def aah_normalize(ckpt: Checkpoint) -> str:
    """Heat-map normalisation the Re-ID model was trained with (config model.aah_normalize; "max")."""
    config = ckpt.state.get("config") or {}
    model = config.get("model", {}) if isinstance(config, dict) else {}
    return str(model.get("aah_normalize", "max")) if isinstance(model, dict) else "max"


def aah_agnostic(ckpt: Checkpoint) -> bool:
    """Was the Re-ID model trained on class-agnostic maps (config train.aah_targets=agnostic)?"""
    config = ckpt.state.get("config") or {}
    train = config.get("train", {}) if isinstance(config, dict) else {}
    return isinstance(train, dict) and train.get("aah_targets") == "agnostic"
