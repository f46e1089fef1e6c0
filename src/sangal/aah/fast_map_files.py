"""The distilled fast-map network (:class:`~sangal.models.fast_map_net.FastMapNet`) on disk, inside an attribute
checkpoint.

Fitted by :mod:`sangal.train.distill`, read by fast heat maps (cache build, evaluation, search, export).
The file binds itself to the attribute weights it was fitted to (their sha256 in its metadata), and
fast AAH caches bind themselves to the file's own sha256 (:func:`fast_map_net_sha256`), which
``map_predictor.json`` beside it records and loading checks (a network without its record is refused).
On disk the network keeps its first name, "map predictor" (``map_predictor.safetensors``/``.json``, the arch
kind ``map_predictor``, the manifest key ``predictor_sha256``), so that existing checkpoints and caches still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sangal.errors import CheckpointError
from sangal.models.arch import build_model
from sangal.models.fast_map_net import FastMapNet
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
from sangal.store.skeleton import assign_weights, build_skeleton, check_materialised

__all__ = ["DISTILL_HINT", "FAST_MAP_NET_FILE", "FAST_MAP_NET_RECORD", "fast_map_net_sha256",
           "load_fast_map_net", "save_fast_map_net"]

# The disk names keep the network's first name (map predictor): artefacts written before the rename still load.
FAST_MAP_NET_FILE = "map_predictor.safetensors"
FAST_MAP_NET_RECORD = "map_predictor.json"  # {"sha256": ...} of FAST_MAP_NET_FILE, written after it
DISTILL_HINT = "run `sangal distill` (after `sangal aah`) or use eval.aah=exact"


def save_fast_map_net(attr_ckpt_dir: str | Path, net: FastMapNet, info: dict[str, Any]) -> Path:
    """Write ``net`` into the attribute checkpoint directory (temp file + rename)."""
    directory = Path(attr_ckpt_dir)
    meta = {"config": net.config(), "attr_sha256": cached_sha256(directory / MODEL_FILE),
            **info, **provenance()}
    path = directory / FAST_MAP_NET_FILE
    weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_file(path) as tmp:
        save_safetensors(tmp, weights, {"sangal": json.dumps(meta)})
        digest = file_sha256(tmp)
    atomic_write_text(directory / FAST_MAP_NET_RECORD, json.dumps({"sha256": digest, "file": FAST_MAP_NET_FILE}))
    return path


def load_fast_map_net(attr_ckpt_dir: str | Path, device: str | torch.device = "cpu") -> FastMapNet:
    """The distilled fast-map network of an attribute checkpoint, in eval mode.

    Raises:
        CheckpointError: no network saved, or one fitted to other attribute weights.
    """
    from safetensors import safe_open

    directory = Path(attr_ckpt_dir)
    path = directory / FAST_MAP_NET_FILE
    if not path.is_file():
        raise CheckpointError(f"attribute checkpoint {directory} has no distilled map predictor ({FAST_MAP_NET_FILE}), "
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
    # the arch kind keeps the disk name; built on meta, so no random draws for weights the file replaces
    net = build_skeleton(lambda: build_model({"kind": "map_predictor", **cfg}))
    try:
        assign_weights(net, weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit its own recorded shape ({str(exc).splitlines()[0]}); "
                              f"{DISTILL_HINT}") from exc
    check_materialised(net, path)
    net.meta = meta  # type: ignore[attr-defined]
    return net.to(device).eval()


def _verify(directory: Path) -> None:
    """The network's file against the sha256 its record holds; a network without its record is refused, as a
    checkpoint without its state.json is (nothing would say whether its bytes are the ones written)."""
    record = directory / FAST_MAP_NET_RECORD
    if not record.is_file():
        raise CheckpointError(f"{record} is missing, so {FAST_MAP_NET_FILE} beside it cannot be checked against the "
                              f"sha256 recorded when it was written; {DISTILL_HINT}")
    try:
        expected = str(json.loads(record.read_text(encoding="utf-8"))["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{record} is unreadable ({exc}); {DISTILL_HINT}") from exc
    verify_sha256(directory / FAST_MAP_NET_FILE, expected, CheckpointError, DISTILL_HINT)


def fast_map_net_sha256(attr_ckpt_dir: str | Path) -> str | None:
    """sha256 of the saved fast-map network's file, or None (binds fast AAH caches to it)."""
    path = Path(attr_ckpt_dir) / FAST_MAP_NET_FILE
    return cached_sha256(path) if path.is_file() else None
