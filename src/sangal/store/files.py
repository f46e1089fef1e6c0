"""Durable storage primitives shared by checkpoints and the AAH cache.

* atomic writes: :func:`atomic_write_text` (temp file + fsync + rename),
  :func:`staged_dir` (build a directory in a hidden sibling, then rename it
  into place), :func:`replace_dir` / :func:`recover_aside` (replace an
  existing directory so that a crash leaves the old or the new one);
* :func:`file_sha256` (streamed) and :func:`provenance` (git commit, sangal
  version, creation time) to bind outputs to their inputs;
* a JSON codec (:func:`to_json` / :func:`from_json`) that keeps tuples,
  Counters (``MultiStepLR`` milestones), int-keyed dicts, bytes and small
  tensors exact in state.json and manifests.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sangal.version import __version__

__all__ = [
    "file_sha256", "atomic_write_text", "replace_dir", "recover_aside", "staged_dir",
    "save_safetensors", "git_commit", "provenance", "to_json", "from_json", "write_json_atomic",
]

logger = logging.getLogger(__name__)


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + fsync + rename."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, atomically replacing an existing ``dst``.

    An existing ``dst`` is renamed aside (``.<name>.old-*``), ``src`` renamed in,
    then the old copy deleted; :func:`recover_aside` undoes a crash in between.
    """
    aside = None
    if dst.exists():
        aside = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dst, aside)
    os.rename(src, dst)
    _fsync_dir(dst.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def recover_aside(directory: Path) -> None:
    """If ``directory`` is missing but a copy renamed aside by :func:`replace_dir` exists, restore it."""
    if directory.exists() or not directory.parent.is_dir():
        return
    asides = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if asides:
        logger.warning("restoring %s from %s (a replacement was interrupted)", directory, asides[-1])
        os.rename(asides[-1], directory)


@contextmanager
def staged_dir(directory: Path) -> Iterator[Path]:
    """Yield a hidden sibling temp dir; on success fsync it and move it to ``directory``."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_aside(directory)
    for pattern in (f".{directory.name}.tmp-*", f".{directory.name}.old-*"):
        for stale in directory.parent.glob(pattern):
            logger.info("removing %s left by an interrupted save", stale)
            _remove_tree(stale)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        replace_dir(tmp, directory)
    except BaseException:
        _remove_tree(tmp)
        raise


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some filesystems refuse fsync on directories
        pass


def save_safetensors(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` with string ``metadata``; an empty file (no tensors, no metadata) stays readable.

    safetensors 0.8 writes an invalid header for ``{}`` tensors with ``{}`` metadata (an optimizer without
    state, e.g. SGD without momentum before its first step), so empty metadata is written as none.
    """
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=dict(metadata) or None)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the git checkout holding sangal's source, or None (installed package, no git)."""
    src = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 2 or not (Path(out[0]) / "src" / "sangal").is_dir():
        return None
    return out[1]


def provenance() -> dict[str, Any]:
    """git commit, sangal version and UTC creation time, for state.json and manifests."""
    return {"git_commit": git_commit(), "sangal_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ----------------------------------------------------------------------------- JSON codec
# state.json keeps tuples, Counters (MultiStepLR milestones), int-keyed dicts,
# bytes and small tensors exact through a few tagged objects.


def to_json(obj: Any, where: str = "state") -> Any:
    """Turn ``obj`` into JSON-ready data; TypeError naming ``where`` for unsupported types."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Counter):
        return {"__counter__": [[to_json(k, where), v] for k, v in obj.items()]}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj):
            return {k: to_json(v, f"{where}.{k}") for k, v in obj.items()}
        return {"__items__": [[to_json(k, where), to_json(v, f"{where}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json(v, where) for v in obj]}
    if isinstance(obj, list):
        return [to_json(v, where) for v in obj]
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, Tensor):
        return {"__tensor__": obj.detach().cpu().tolist(), "dtype": str(obj.dtype).removeprefix("torch.")}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{where} is a {type(obj).__name__}, which state.json cannot store")


def from_json(obj: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__counter__" in obj:
        return Counter({from_json(k): v for k, v in obj["__counter__"]})
    if "__items__" in obj:
        return {from_json(k): from_json(v) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(from_json(v) for v in obj["__tuple__"])
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__tensor__" in obj:
        return torch.tensor(obj["__tensor__"], dtype=getattr(torch, obj["dtype"]))
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: from_json(v) for k, v in obj.items()}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file + rename so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=_json_default)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
