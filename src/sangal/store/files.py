"""Durable storage primitives shared by checkpoints and the AAH cache.

* atomic writes: :func:`atomic_file` / :func:`atomic_write_bytes` / :func:`atomic_write_text` (temp file +
  fsync + rename; the one writer of every file a command writes),
  :func:`staged_dir` (build a directory in a hidden sibling, then rename it
  into place), :func:`replace_dir` / :func:`recover_aside` (replace an
  existing directory so that a crash leaves the old or the new one);
* one writer per output: :func:`output_lock` (``.NAME.lock`` beside it, released
  by the kernel when its holder dies); temp folders carry their writer's
  ``pid@host``, so only those whose writer is gone are cleaned up;
* integrity: :func:`file_sha256`, :func:`verify_sha256` (the one check of a file
  against the sha256 recorded when it was written, cached by file stat; it lives
  in :mod:`sangal.data.verify` so the weights cache below this layer uses it too),
  :func:`seal_json` / :func:`check_seal` (a JSON document that carries its own
  sha256), and :func:`provenance` (git commit, sangal version, creation time);
* a JSON codec (:func:`to_json` / :func:`from_json`) that keeps tuples,
  Counters (``MultiStepLR`` milestones), int-keyed dicts, bytes and small
  tensors exact in state.json and manifests.
"""

from __future__ import annotations

import base64
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
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

try:
    import fcntl
except ImportError:  # not POSIX: outputs are written without a lock
    fcntl = None

from sangal.data.verify import cached_sha256, file_sha256, verify_sha256
from sangal.errors import BusyError, OutputError, SangalError
from sangal.version import __version__

__all__ = [
    "file_sha256", "cached_sha256", "verify_sha256", "seal_json", "check_seal", "output_lock",
    "atomic_file", "atomic_write_bytes", "atomic_write_text", "replace_dir", "recover_aside", "staged_dir",
    "save_safetensors", "git_commit", "provenance", "to_json", "from_json", "write_json_atomic",
]

logger = logging.getLogger(__name__)

SEAL_KEY = "document_sha256"
RECOVER_WAIT_S = 60.0  # how long a reader waits for another process's swap before giving up
_HELD: dict[tuple[str, int], int] = {}  # (lock file, thread) -> depth: a writer may re-enter its own lock
_TMP_WRITER = re.compile(r"\.tmp-(\d+)@([^/]*)-[0-9a-f]{8}$")


def _canonical_sha256(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` as JSON data plus its own sha256 under ``document_sha256`` (:func:`check_seal` reads it back)."""
    body = json.loads(json.dumps(doc, default=_json_default))  # exactly what a reader will parse
    body.pop(SEAL_KEY, None)
    return {**body, SEAL_KEY: _canonical_sha256(body)}


def check_seal(doc: Any, path: Path, error: type[SangalError], remedy: str) -> Any:
    """``doc`` without its seal; ``error`` naming ``path`` when the content no longer matches it.

    Documents written before sealing (no ``document_sha256``) pass unchanged.
    """
    if not isinstance(doc, dict) or SEAL_KEY not in doc:
        return doc
    body = {k: v for k, v in doc.items() if k != SEAL_KEY}
    if _canonical_sha256(body) != doc[SEAL_KEY]:
        raise error(f"{path}: its content does not match the sha256 it was written with (the file is corrupt "
                    f"or was edited); {remedy}")
    return body


def _writer_tag() -> str:
    """``pid@host`` of this process, as temp folder names carry it."""
    return f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9._-]', '_', socket.gethostname())}"


@contextmanager
def output_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold the write lock of output ``path`` (``.NAME.lock`` beside it; re-entrant within a thread).

    ``wait=False``: BusyError naming the holder when another process holds it. The kernel releases the
    lock of a killed holder; the lock file is removed on release.
    """
    path = Path(path).absolute()
    lock = path.parent / f".{path.name}.lock"
    key = (str(lock), threading.get_ident())
    if fcntl is None or _HELD.get(key):
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = _acquire(lock, path, wait)
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)  # releases the flock


def _acquire(lock: Path, path: Path, wait: bool) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BusyError(f"{path} is being written by {holder}; wait for it to finish or choose another "
                            f"output") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder removed the file while we waited: lock the new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {_writer_tag().replace('@', ' on ')}".encode(), 0)
            return fd
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write; on success fsync it and rename it over ``path``.

    The old file stays whole until the new one is (a kill leaves one or the other); the temp file is removed
    on failure, and those of killed writers by the next write. An OSError (a read-only folder, a full disk) becomes one OutputError line naming ``path``.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if stale.is_file() and _writer_gone(stale):  # left by a writer killed before its rename
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{_writer_tag()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc}); choose another output") from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`."""
    atomic_write_bytes(path, text.encode("utf-8"))


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
    """If ``directory`` is missing but a copy renamed aside by :func:`replace_dir` exists, restore it.

    Under the output's lock, so a live writer finishes its swap first (a writer holding it for long has
    restored the directory when it started); a read-only folder is left as it is.
    """
    directory = Path(directory)
    if directory.exists() or not directory.parent.is_dir() or not _asides(directory):
        return
    deadline = time.monotonic() + RECOVER_WAIT_S
    while not directory.exists():
        try:
            with output_lock(directory, wait=False):
                asides = _asides(directory)
                if asides and not directory.exists():
                    logger.warning("restoring %s from %s (a replacement was interrupted)", directory, asides[-1])
                    os.rename(asides[-1], directory)
            return
        except BusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except OSError as exc:
            logger.warning("cannot restore %s from its interrupted replacement: %s", directory, exc)
            return


def _asides(directory: Path) -> list[Path]:
    return sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)


def _writer_gone(tmp: Path) -> bool:
    """Whether the process that made temp folder ``tmp`` is dead (folders of older versions: yes)."""
    m = _TMP_WRITER.search(tmp.name)
    if m is None:
        return True
    pid, host = int(m.group(1)), m.group(2)
    if host != _writer_tag().split("@", 1)[1]:
        return False  # another machine's writer: we cannot tell, so we leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return pid == os.getpid()  # this process only gets here for a folder an earlier call of it left


@contextmanager
def staged_dir(directory: Path) -> Iterator[Path]:
    """Yield a hidden sibling temp dir; on success fsync it and move it to ``directory``.

    Holds the output's lock throughout; removes temp folders only when their writer is gone.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(directory):
        recover_aside(directory)
        for stale in directory.parent.glob(f".{directory.name}.tmp-*"):
            if _writer_gone(stale):
                logger.info("removing %s left by an interrupted save", stale)
                _remove_tree(stale)
            else:
                logger.info("leaving %s: its writer is still running", stale)
        for stale in directory.parent.glob(f".{directory.name}.old-*"):
            _remove_tree(stale)  # the swap that left it completed (recover_aside restored any other)
        tmp = directory.with_name(f".{directory.name}.tmp-{_writer_tag()}-{uuid.uuid4().hex[:8]}")
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
    """Write JSON through :func:`atomic_file`, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
