"""The AAH cache's manifest: what a cache's maps were computed from, and the checks that refuse a stale one.

Written by :mod:`sangal.aah.build`, read by :class:`sangal.aah.cache.AAHCache`; the layout of a cache
directory and the meaning of every key are in :mod:`sangal.aah.cache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sangal.aah.fast_map_files import fast_map_net_sha256
from sangal.aah.spec import Targets
from sangal.data.attributes import get_schema
from sangal.data.transforms import build_transforms
from sangal.errors import CacheError
from sangal.store.checkpoint import MODEL_FILE
from sangal.store.files import cached_sha256, check_seal

__all__ = ["FORMAT_VERSION", "IDENTITY", "MANIFEST", "METHOD_KEYS", "PROBS_FILE", "PROGRESS", "REBUILD",
           "STAGE_FILES", "cache_files", "changed_keys", "check_images", "check_method", "image_list", "manifest_precision", "new_manifest", "partial_dir",
           "read_manifest", "read_progress", "schema_entry", "targets_entry"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
STAGE_FILES = ("aah2.npy", "aah3.npy", "aah4.npy")
#: a ``classes`` cache also keeps the attribute net's probabilities (N, sum C_k) beside every class's maps
PROBS_FILE = "probs.npy"
FORMAT_VERSION = 1
REBUILD = "rebuild it with `sangal aah`"
#: manifest entries that must agree for a partial build to be resumed.
IDENTITY = ("format_version", "checkpoint_sha256", "images_sha256", "schema", "height", "width",
             "targets", "normalize", "stages", "dtype")
#: how the maps were computed (eval.aah): "exact" Grad-CAM or "fast" (sangal.aah.fast + the distilled
#: predictor, whose file sha256 binds the cache); manifests written before these keys existed are exact.
METHOD_KEYS = {"method": "exact", "predictor_sha256": None}  # the fast-map network's sha256 (key keeps its disk name)


def image_list(records: Sequence[Any]) -> dict[str, Any]:
    """Ordered image list of ``records``: common root, relative paths, sizes and their sha256."""
    paths = [Path(r.path).resolve() for r in records]
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path(".")
    rel = [p.relative_to(root).as_posix() for p in paths]
    try:
        sizes = [p.stat().st_size for p in paths]
    except OSError as exc:
        raise CacheError(f"cannot read image {exc.filename}: {exc.strerror}") from exc
    digest = hashlib.sha256()
    for r, s in zip(rel, sizes):
        digest.update(f"{r}\t{s}\n".encode())
    return {"root": str(root), "paths": rel, "sizes": sizes, "sha256": digest.hexdigest()}


def cache_files(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The array files of a cache, in the order of its manifest's ``stages`` shapes."""
    return (*STAGE_FILES, PROBS_FILE) if manifest["targets"]["mode"] == "classes" else STAGE_FILES


def targets_entry(targets: Targets) -> dict[str, Any]:
    """The manifest's record of what the maps follow: the mode, and the labels' sha256 for label-guided maps."""
    if targets.mode == "agnostic":
        return {"mode": "agnostic", "sha256": None, "multiclass": "abs-predicted"}  # |S| (sangal.aah.modes)
    if targets.mode != "labels":
        return {"mode": targets.mode, "sha256": None}
    arr = np.ascontiguousarray(targets.labels, dtype=np.int64)
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
    return {"mode": "labels", "sha256": digest}


def schema_entry(arch: dict[str, Any]) -> dict[str, Any]:
    """Attribute names and classes of the checkpoint's heads (generic names without a schema)."""
    classes = [int(c) for c in arch["attr_classes"]]
    names = [f"attr{k}" for k in range(len(classes))]
    try:
        schema = get_schema(arch.get("dataset", ""), arch.get("colour_mode", "binary"))
        if schema.num_classes == classes:
            names = schema.names
    except Exception as exc:  # unknown dataset: keep generic names
        logger.debug("no attribute schema for %s: %s", arch.get("dataset"), exc)
    return {"names": names, "num_classes": classes}


def new_manifest(ckpt_path: Path, arch: dict[str, Any], records: list[Any], height: int, width: int,
                  targets: Targets, normalize: str, chunk_size: int,
                  stages: list[list[int]], precision: str = "float32") -> dict[str, Any]:
    images = image_list(records)
    return {
        "format_version": FORMAT_VERSION, "complete": False,
        "checkpoint_path": str(Path(ckpt_path).resolve()),
        "checkpoint_sha256": cached_sha256(Path(ckpt_path) / MODEL_FILE),
        "images_sha256": images["sha256"], "images": {"count": len(records), **images},
        "schema": schema_entry(arch), "height": height, "width": width,
        "targets": targets_entry(targets), "normalize": normalize,
        "transform": repr(build_transforms(height, width, train=False)),
        "chunk_size": chunk_size, "num_chunks": math.ceil(len(records) / chunk_size),
        "stages": stages, "dtype": "float16", "precision": precision,
    }


def manifest_precision(m: dict[str, Any]) -> str:
    """What a cache's maps were computed in: ``float32`` or ``bf16``. Manifests written before issue 26
    recorded it as provenance (``{"bf16_autocast": bool, "channels_last": bool}``) or not at all (float32)."""
    value = m.get("precision", "float32")
    if isinstance(value, dict):
        return "bf16" if value.get("bf16_autocast") else "float32"
    return str(value)


def partial_dir(out: Path) -> Path:
    """Where an unfinished build of ``out`` lives."""
    return out.with_name(out.name + ".partial")


def read_progress(partial: Path) -> tuple[int, int]:
    """(finished chunks, total chunks) of a partial build; (0, 0) if unreadable."""
    try:
        doc = json.loads((partial / PROGRESS).read_text(encoding="utf-8"))
        return int(doc["done_chunks"]), int(doc["num_chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def read_manifest(path: Path, out: Path) -> dict[str, Any]:
    """The manifest of cache ``out``; CacheError naming the file if missing or invalid."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"AAH cache {out} has no {MANIFEST}; {REBUILD}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"AAH cache manifest {path} is not valid JSON ({exc}); {REBUILD}") from exc
    doc = check_seal(doc, path, CacheError, REBUILD)
    required = (*IDENTITY, "images", "checkpoint_path", "complete")
    missing = [k for k in required if k not in doc] if isinstance(doc, dict) else list(required)
    if missing:
        raise CacheError(f"AAH cache manifest {path} lacks {', '.join(missing)}; {REBUILD}")
    return doc


def check_images(out: Path, built: dict[str, Any], now: dict[str, Any]) -> None:
    """CacheError saying how the image list changed (added/removed/reordered/resized)."""
    if built["sha256"] == now["sha256"]:
        return
    old, new = built["paths"], now["paths"]
    added, removed = len(set(new) - set(old)), len(set(old) - set(new))
    if added or removed:
        what = f"{added} images added and {removed} removed"
    elif old != new:
        what = "the same images in another order"
    else:
        changed = sum(a != b for a, b in zip(built["sizes"], now["sizes"]))
        what = f"{changed} images changed (file size differs)"
    raise CacheError(f"AAH cache {out} was built for another image list ({len(old)} images, now {len(new)}: "
                     f"{what}); {REBUILD}")


def changed_keys(path: Path, manifest: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """Names of the ``keys`` whose values in manifest file ``path`` differ from ``manifest``."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"unreadable {path.name}"]
    if not isinstance(old, dict):
        return list(keys)
    changed = [k for k in keys if old.get(k, METHOD_KEYS.get(k)) != manifest[k]]
    return changed + (["precision"] if manifest_precision(old) != manifest_precision(manifest) else [])


def check_method(out: Path, m: dict[str, Any], method: str, attr_ckpt_dir: str | Path | None) -> None:
    """CacheError when cache ``out`` was computed another way (or with another distilled predictor)."""
    built = m.get("method", "exact")
    if built != method:
        raise CacheError(f"AAH cache {out} holds {built} heat maps, not {method} ones (eval.aah); {REBUILD}")
    if method == "fast" and attr_ckpt_dir is not None:
        if fast_map_net_sha256(attr_ckpt_dir) != m.get("predictor_sha256"):
            raise CacheError(f"AAH cache {out} is stale: the map predictor in {attr_ckpt_dir} changed since "
                             f"it was built; {REBUILD}")
