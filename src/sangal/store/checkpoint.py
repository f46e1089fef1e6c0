"""Checkpoint directories: weights, optimizer state and run state, written atomically.

A checkpoint is a directory (e.g. ``runs/x/checkpoints/epoch_003``)::

    model.safetensors      model state_dict (contiguous CPU tensors)
    optimizer.safetensors  optimizer state tensors as ``state.<param_idx>.<name>`` (optional)
    extra.safetensors      other named tensors of the run, e.g. a weight EMA's shadow (optional)
    state.json             epoch, step, scheduler, RNG states, resolved config, ``arch``,
                           git commit, sangal version, creation time, optimizer scalars,
                           the sha256 of both weight files and of itself (``document_sha256``)

It is written into a hidden sibling temp dir, fsynced, then renamed into place,
so a crash leaves either the old checkpoint or the new one, never a mix.
Weights are safetensors only: nothing here unpickles. Loading checks every file
against the sha256 recorded when it was written (:func:`~sangal.store.files.verify_sha256`).

``arch`` rebuilds the model (:func:`build_model`); :func:`load_weights` refuses
a checkpoint of another architecture with a :class:`CheckpointError` naming the
difference.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sangal.errors import CheckpointError, ConfigError, NonFiniteError
from sangal.models.arch import build_model
from sangal.models.arch_keys import ARCH, arch_value
from sangal.store.files import (
    check_seal,
    file_sha256,
    from_json,
    provenance,
    recover_aside,
    save_safetensors,
    seal_json,
    staged_dir,
    to_json,
    verify_sha256,
)
from sangal.store.rng import capture_rng_state, restore_rng_state
from sangal.store.skeleton import assign_weights, build_skeleton, check_materialised, is_skeleton, unsaved_buffers

__all__ = [
    "Checkpoint", "save_checkpoint", "load_checkpoint", "restore_optimizer", "capture_rng_state",
    "restore_rng_state", "build_model", "load_model", "load_weights", "file_sha256",
    "latest_checkpoint", "ARCH_KEYS",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EXTRA_FILE = "extra.safetensors"
STATE_FILE = "state.json"
FORMAT_VERSION = 1
#: what a checkpoint can hold: a Re-ID net, an attribute net, or a map predictor being distilled
KINDS = ("reid", "attribute", "map_predictor")
#: arch entries that change the network; a mismatch is refused (the others describe the data; logged).
ARCH_KEYS = tuple(key.name for key in ARCH if key.strict)
_SOFT_KEYS = tuple(key.name for key in ARCH if not key.strict)
_RESERVED = ("arch", "optimizer", "git_commit", "sangal_version", "created", "format_version",
             "model_sha256", "optimizer_sha256", "extra_sha256", "document_sha256")
_RESTORE = "restore the checkpoint from a copy or train it again"
_CKPT_NAME = re.compile(r"^(?:(?:epoch|step)_\d+|last|best|final)$")
_MAX_SHOWN = 4


@dataclass
class Checkpoint:
    """A loaded checkpoint directory.

    Attributes:
        path: the checkpoint directory.
        arch: the dict :func:`build_model` rebuilds the model from.
        state: everything in state.json (epoch, step, rng, config, ...).
        weights: model state_dict (CPU tensors).
        optimizer_tensors: flattened optimizer tensors, or None without an optimizer.
        extra_tensors: the ``extra`` tensors it was saved with, or None.
    """

    path: Path
    arch: dict[str, Any]
    state: dict[str, Any]
    weights: dict[str, Tensor]
    optimizer_tensors: dict[str, Tensor] | None = None
    extra_tensors: dict[str, Tensor] | None = None


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    arch: Mapping[str, Any],
    state: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write ``model`` (+ ``optimizer``, + ``extra`` named tensors) and ``state`` as checkpoint ``directory``,
    atomically.

    ``state`` is stored in state.json as is (epoch, step, config, scheduler
    ``state_dict()``, ...); tuples, bytes, non-string dict keys and small
    tensors survive the round trip. The current RNG states are added under
    ``rng`` unless ``state`` has one. An existing checkpoint of the same name
    is replaced atomically. Returns the directory. A model with a non-finite
    tensor is refused (NonFiniteError): no checkpoint holds a diverged run.
    """
    directory = Path(directory)
    clash = [k for k in _RESERVED if k in state]
    if clash:
        raise ValueError(f"state must not set {clash}: save_checkpoint fills them in")
    doc: dict[str, Any] = dict(state)
    doc.setdefault("rng", capture_rng_state())
    doc.update(format_version=FORMAT_VERSION, arch=dict(arch), **provenance())
    weights, aliases = _dedupe_shared(model.state_dict())
    bad = [k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(f"{len(bad)} of {len(weights)} tensors of the model are non-finite ({bad[0]}, ...), so "
                             f"{directory} was not written")
    with staged_dir(directory) as tmp:
        save_safetensors(tmp / MODEL_FILE, weights, {"aliases": json.dumps(aliases)})
        if optimizer is not None:
            tensors, doc["optimizer"] = _flatten_optimizer(optimizer.state_dict())
            save_safetensors(tmp / OPTIMIZER_FILE, tensors, {})
            doc["optimizer_sha256"] = file_sha256(tmp / OPTIMIZER_FILE)
        if extra:
            save_safetensors(tmp / EXTRA_FILE, {k: t.detach().to("cpu", copy=True).contiguous()
                                                for k, t in extra.items()}, {})
            doc["extra_sha256"] = file_sha256(tmp / EXTRA_FILE)
        doc["model_sha256"] = file_sha256(tmp / MODEL_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(seal_json(to_json(doc)), indent=1), encoding="utf-8")
    logger.info("saved checkpoint %s", directory)
    return directory


def _dedupe_shared(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Contiguous CPU copies, one per shared tensor (safetensors refuses shared storage).

    Returns (tensors to store, alias name -> stored name).
    """
    stored: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, t in state_dict.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        stored[name] = t.detach().to("cpu", copy=True).contiguous()
    return stored, aliases


def _flatten_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (``state.<idx>.<name>``) and JSON parts."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


# ----------------------------------------------------------------------------- loading


def load_checkpoint(directory: str | Path, expected_kind: str | None = None) -> Checkpoint:
    """Read checkpoint ``directory``; CheckpointError naming the file if missing or corrupt."""
    directory = Path(directory)
    recover_aside(directory)
    if not directory.is_dir():
        hint = ""
        if (directory / "checkpoints").is_dir():
            latest = latest_checkpoint(directory)
            hint = f" (it is a run folder; its newest checkpoint is {latest})" if latest else ""
        raise CheckpointError(f"checkpoint {directory} does not exist{hint}")
    state = _read_state(directory / STATE_FILE)
    arch = state.get("arch")
    if not isinstance(arch, dict) or arch.get("kind") not in KINDS:
        raise CheckpointError(
            f"{directory / STATE_FILE} has no valid 'arch' (need kind {', '.join(map(repr, KINDS))})"
        )
    if expected_kind is not None and arch["kind"] != expected_kind:
        raise CheckpointError(
            f"checkpoint {directory} is kind {arch['kind']}, expected {expected_kind}"
        )
    files = ((MODEL_FILE, "model_sha256"), (OPTIMIZER_FILE, "optimizer_sha256"), (EXTRA_FILE, "extra_sha256"))
    for name, key in files:
        if state.get(key):  # checkpoints of older versions recorded no optimizer hash
            verify_sha256(directory / name, state[key], CheckpointError, _RESTORE)
    weights, meta = _read_safetensors(directory / MODEL_FILE)
    try:
        aliases = json.loads((meta or {}).get("aliases", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{directory / MODEL_FILE} has corrupt alias metadata: {exc}") from exc
    for alias, target in aliases.items():
        if target not in weights:
            raise CheckpointError(f"{directory / MODEL_FILE} lacks {target!r} (aliased by {alias!r})")
        weights[alias] = weights[target]
    optimizer_tensors = None
    if (directory / OPTIMIZER_FILE).exists():
        optimizer_tensors, _ = _read_safetensors(directory / OPTIMIZER_FILE)
    extra = _read_safetensors(directory / EXTRA_FILE)[0] if (directory / EXTRA_FILE).exists() else None
    return Checkpoint(directory, arch, state, weights, optimizer_tensors, extra)


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing (incomplete or not a checkpoint)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"checkpoint file {path} does not hold a JSON object")
    return from_json(check_seal(doc, path, CheckpointError, _RESTORE))


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str] | None]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers/sizes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {reason}") from exc
    return tensors, meta


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the optimizer state saved in ``ckpt`` into ``optimizer`` (same param order)."""
    saved = ckpt.state.get("optimizer")
    if saved is None:
        raise CheckpointError(f"checkpoint {ckpt.path} holds no optimizer state")
    per_param: dict[int, dict[str, Any]] = {}
    for idx, values in saved["scalars"].items():
        per_param.setdefault(int(idx), {}).update(values)
    for key, tensor in (ckpt.optimizer_tensors or {}).items():
        _, idx, name = key.split(".", 2)
        per_param.setdefault(int(idx), {})[name] = tensor.clone()
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": saved["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"optimizer state in {ckpt.path} does not fit this optimizer: {exc}"
        ) from exc


# ----------------------------------------------------------------------------- models


def load_weights(model: nn.Module, ckpt: Checkpoint, arch: Mapping[str, Any]) -> None:
    """Copy ``ckpt``'s weights into ``model`` (described by ``arch``), refusing another architecture."""
    problems = []
    kinds = {ckpt.arch.get("kind"), arch.get("kind")}
    for key in (k.name for k in ARCH if k.strict and kinds & set(k.kinds)):
        have, want = (arch_value(a, key) for a in (ckpt.arch, arch))
        if _norm(have) != _norm(want):
            problems.append(f"kind {have}, expected {want}" if key == "kind"
                            else f"{key} {_show(have)} but the model has {_show(want)}")
    if problems:
        raise CheckpointError(f"checkpoint {ckpt.path} has " + "; ".join(problems))
    for key in _SOFT_KEYS:
        if key in ckpt.arch and key in arch and ckpt.arch[key] != arch[key]:
            logger.warning("checkpoint %s was trained with %s=%s, the model is set up for %s",
                           ckpt.path, key, ckpt.arch[key], arch[key])
    expected = model.state_dict()
    missing = [k for k in expected if k not in ckpt.weights]
    unexpected = [k for k in ckpt.weights if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
              for k, v in ckpt.weights.items() if k in expected and v.shape != expected[k].shape]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", shapes)):
        if items:
            problems.append(f"{len(items)} {label} keys ({_few(items)})")
    if problems:
        raise CheckpointError(f"weights in {ckpt.path / MODEL_FILE} do not fit the model: "
                              + "; ".join(problems))
    if is_skeleton(model):
        assign_weights(model, ckpt.weights, strict=True)
    else:
        model.load_state_dict(ckpt.weights, strict=True)


def load_model(
    directory: str | Path, expected_kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a checkpoint describes, load its weights; returns (model in eval mode, ckpt).

    The model is built on the meta device and given the file's tensors (:mod:`sangal.store.skeleton`): no
    random initialisation to overwrite, and the global RNG is left as it was. A model with buffers no file
    holds is built for real instead, under a forked RNG.
    """
    ckpt = load_checkpoint(directory, expected_kind)
    model = _rebuild(ckpt, skeleton=True)
    if unsaved_buffers(model):  # computed in the constructor, not saved: a skeleton would keep them on meta
        with torch.random.fork_rng(devices=[]):
            model = _rebuild(ckpt, skeleton=False)
    load_weights(model, ckpt, ckpt.arch)
    check_materialised(model, ckpt.path / MODEL_FILE)
    return model.to(device).eval(), ckpt


def _rebuild(ckpt: Checkpoint, skeleton: bool) -> nn.Module:
    """The untrained model ``ckpt.arch`` describes, never with pretrained weights; on meta if ``skeleton``."""
    try:
        if skeleton:
            return build_skeleton(lambda: build_model(ckpt.arch, pretrained=False))
        return build_model(ckpt.arch, pretrained=False)
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt.path / STATE_FILE}: {exc}") from exc


def _norm(value: Any) -> Any:
    """Compare tuples as lists and an empty head list as None (mode "id" stores [])."""
    if isinstance(value, (tuple, list)):
        return list(value) or None
    return value


def _show(value: Any) -> str:
    value = _norm(value)
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} heads: {', '.join(map(str, value[:4]))}, ...]"
    return str(value)


def _few(items: list[str]) -> str:
    return ", ".join(items[:_MAX_SHOWN]) + (", ..." if len(items) > _MAX_SHOWN else "")


# ----------------------------------------------------------------------------- finding


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest complete checkpoint in ``run_dir/checkpoints`` (by step, epoch, time), or None.

    Only directories named ``epoch_NNN``, ``step_NNNNNN``, ``last``, ``best`` or ``final``
    with a readable state.json and a model.safetensors count; temp dirs left by
    a crash are ignored.
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    for aside in folder.glob(".*.old-*"):
        recover_aside(folder / aside.name[1:].split(".old-")[0])
    best: tuple[tuple[float, ...], Path] | None = None
    for path in _candidates(folder):
        try:
            doc = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            logger.warning("skipping %s: unreadable %s", path, STATE_FILE)
            continue
        key = (_num(doc.get("step")), _num(doc.get("epoch")), (path / STATE_FILE).stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, path)
    return best[1] if best else None


def _candidates(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.iterdir()):
        if path.is_dir() and _CKPT_NAME.match(path.name) and (path / MODEL_FILE).is_file():
            yield path


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else -1.0
