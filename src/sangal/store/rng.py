"""The random states a checkpoint carries, as JSON: python, numpy, torch CPU and CUDA (bit-identical resume)."""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["capture_rng_state", "restore_rng_state"]

logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """JSON-ready RNG states: python ``random``, numpy, torch CPU and CUDA (if available)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        rng["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return rng


def restore_rng_state(rng: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(rng["torch"]))
    if "cuda" in rng and torch.cuda.is_available():
        states = [_unb64(s) for s in rng["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            logger.warning("saved %d CUDA RNG states but %d devices; CUDA RNG not restored",
                           len(states), torch.cuda.device_count())


def _b64(t: Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()
