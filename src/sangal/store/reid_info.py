"""What a Re-ID checkpoint records about how it was trained: its input size and its attribute net.

The test-time predictor (:mod:`sangal.evaluate.predictor`) reads these (the map spec: :mod:`sangal.aah.spec`)
and finds the attribute checkpoint of a san-gal model even when its run folder was moved or copied.
"""

from __future__ import annotations

import os
from pathlib import Path

from sangal.errors import CheckpointError
from sangal.store.checkpoint import MODEL_FILE, Checkpoint
from sangal.store.files import file_sha256

__all__ = ["find_attribute_checkpoint", "input_size", "run_folder"]


def input_size(ckpt: Checkpoint) -> tuple[int, int]:
    """(height, width) the model was trained at (arch, else the stored config)."""
    arch, config = ckpt.arch, ckpt.state.get("config") or {}
    data = config.get("data", {}) if isinstance(config, dict) else {}
    height, width = arch.get("height", data.get("height")), arch.get("width", data.get("width"))
    if not height or not width:
        raise CheckpointError(f"checkpoint {ckpt.path}: arch records no input height/width")
    return int(height), int(width)


def run_folder(ckpt: Checkpoint) -> Path | None:
    """The run folder (config ``out``) a Re-ID checkpoint sits in: ``<out>/reid/<mode>/checkpoints/<name>``."""
    path = Path(ckpt.path).resolve()
    if len(path.parents) > 3 and path.parent.name == "checkpoints" and path.parents[2].name == "reid":
        return path.parents[3]
    return None


def find_attribute_checkpoint(ckpt: Checkpoint, given: str | Path | None = None) -> Path:
    """The attribute checkpoint of a san-gal model: ``given``, else where its training recorded it.

    The recorded path is tried relative to the run folder first (its place relative to the run's ``out``
    when it was trained, applied to where the checkpoint is now), so a moved or copied run folder finds
    the attribute checkpoint that travelled with it; then as recorded. A candidate whose weights differ
    from the ones training used (``attr_checkpoint_sha256``, when recorded) is passed over.

    Raises:
        CheckpointError: naming every place looked at and why each was refused.
    """
    if given is not None:
        if not (Path(given) / MODEL_FILE).is_file():
            raise CheckpointError(f"attribute checkpoint {given} does not exist (no {MODEL_FILE} in it)")
        return Path(given)
    recorded = ckpt.state.get("attr_checkpoint")
    if not recorded:
        raise CheckpointError(f"checkpoint {ckpt.path} is a san-gal model and records no attribute checkpoint; "
                              f"pass attr_checkpoint (--attr-checkpoint)")
    candidates = []
    config = ckpt.state.get("config") or {}
    trained_out = config.get("out") if isinstance(config, dict) else None
    now = run_folder(ckpt)
    if trained_out and now is not None and Path(recorded).is_absolute() == Path(trained_out).is_absolute():
        candidates.append(Path(os.path.normpath(now / os.path.relpath(recorded, trained_out))))
    if not candidates or candidates[0].resolve() != Path(recorded).resolve():
        candidates.append(Path(recorded))
    want = ckpt.state.get("attr_checkpoint_sha256")
    looked = []
    for candidate in candidates:
        weights = candidate / MODEL_FILE
        if not weights.is_file():
            looked.append(f"{candidate} (missing)")
        elif want and file_sha256(weights) != want:
            looked.append(f"{candidate} (other weights than training used)")
        else:
            return candidate
    raise CheckpointError(f"cannot find the attribute checkpoint of san-gal model {ckpt.path}; looked at "
                          f"{'; '.join(looked)}; pass attr_checkpoint (--attr-checkpoint)")
