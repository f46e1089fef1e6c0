"""Offline Attribute Attention Heat-map (AAH) cache (paper §3.1, special skill 3).

"The attribute classification network will complete the pretraining in
advance, and the attention parameters calculated offline (from AAH) will be
used in the Re-ID network training": the heat maps of every image are computed
once with :func:`sangal.gradcam.attribute_heatmaps` from a trained attribute
checkpoint and read back during Re-ID training and evaluation.

Layout of a cache directory::

    manifest.json   what the maps were computed from (see below), complete=true
    aah2.npy        (N, K, h2, w2) float16, layer2 resolution   } memory-mapped
    aah3.npy        (N, K, h3, w3) float16, layer3 resolution   } (np.lib.format
    aah4.npy        (N, K, h4, w4) float16, layer4 resolution   }  .npy files)

The manifest binds the maps to their inputs: the attribute checkpoint
(model.safetensors sha256 and path), the ordered image list (relative paths,
file sizes and their hash), the attribute schema, the image size, the targets
(ground-truth labels for the train split -- "guided by attribute label" -- or
predicted classes for query/gallery) and the heat-map normalisation.
:meth:`AAHCache.open` refuses a cache whose inputs have changed.

Building is chunked and resumable: maps are written into ``<out>.partial/``
chunk by chunk (``progress.json`` records the finished chunks after each one
is flushed); a restarted build with the same inputs continues at the first
unfinished chunk, and the finished cache is renamed to ``<out>`` atomically.

Augmentation: maps are computed on the un-augmented test-transform image.
:func:`align_aah` mirrors them for horizontally flipped training samples;
pad-and-crop and random erasing are NOT applied to the maps: a crop shifts
the image by up to ``pad`` pixels (10 px by default, about one layer2 cell at
stride 8), which the maps do not follow. The train loop decides whether that
is acceptable or whether to disable those augmentations in san-gal mode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from sangal.data.dataset import ImageDataset
from sangal.data.transforms import build_transforms
from sangal.engine.checkpoint import MODEL_FILE, load_model
from sangal.engine.storage import atomic_write_text, file_sha256, provenance, replace_dir
from sangal.errors import CacheError
from sangal.gradcam import attribute_heatmaps
from sangal.gradcam_fast import fast_attribute_heatmaps

__all__ = ["AAHCache", "BuildInterrupted", "align_aah", "image_list"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
STAGE_FILES = ("aah2.npy", "aah3.npy", "aah4.npy")
FORMAT_VERSION = 1
REBUILD = "rebuild it with `sangal aah`"
#: manifest entries that must agree for a partial build to be resumed.
_IDENTITY = ("format_version", "checkpoint_sha256", "images_sha256", "schema", "height", "width",
             "targets", "normalize", "stages", "dtype")
_F16_MAX = float(np.finfo(np.float16).max)
#: how the maps were computed (eval.aah): "exact" Grad-CAM or "fast" (sangal.gradcam_fast + the distilled
#: predictor, whose file sha256 binds the cache); manifests written before these keys existed are exact.
_METHOD_KEYS = {"method": "exact", "predictor_sha256": None}

Heatmaps = tuple[Tensor, Tensor, Tensor]


class BuildInterrupted(RuntimeError):
    """Raised by :meth:`AAHCache.build` when ``stop_after_chunks`` is reached (tests simulate a kill)."""


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


def _targets_entry(targets: np.ndarray | str | None) -> dict[str, Any]:
    if targets is None or (isinstance(targets, str) and targets == "predicted"):
        return {"mode": "predicted", "sha256": None}
    if isinstance(targets, str):
        if targets != "agnostic":
            raise ValueError(f"targets must be labels (N, K), 'predicted', 'agnostic' or None; got {targets!r}")
        return {"mode": "agnostic", "sha256": None, "multiclass": "abs-predicted"}  # |S| (sangal.aah_modes)
    arr = np.ascontiguousarray(targets, dtype=np.int64)
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
    return {"mode": "labels", "sha256": digest}


def _schema_entry(arch: dict[str, Any]) -> dict[str, Any]:
    """Attribute names and classes of the checkpoint's heads (generic names without a schema)."""
    classes = [int(c) for c in arch["attr_classes"]]
    names = [f"attr{k}" for k in range(len(classes))]
    try:
        from sangal.data.attributes import get_schema

        schema = get_schema(arch.get("dataset", ""), arch.get("colour_mode", "binary"))
        if schema.num_classes == classes:
            names = schema.names
    except Exception as exc:  # unknown dataset: keep generic names
        logger.debug("no attribute schema for %s: %s", arch.get("dataset"), exc)
    return {"names": names, "num_classes": classes}


class AAHCache:
    """Memory-mapped float16 heat maps for every image of a list, bound to an attribute checkpoint."""

    def __init__(self, path: Path, manifest: dict[str, Any], arrays: list[np.ndarray]) -> None:
        self.path = path
        self.manifest = manifest
        self.arrays = arrays  # 3 x (N, K, h, w) float16 memmaps, read-only
        self._index = {p: i for i, p in enumerate(manifest["images"]["paths"])}
        self._root = Path(manifest["images"]["root"])

    def __len__(self) -> int:
        return int(self.manifest["images"]["count"])

    @property
    def schema_names(self) -> list[str]:
        return list(self.manifest["schema"]["names"])

    def get(self, indices: Sequence[int] | Tensor | np.ndarray | int) -> Heatmaps:
        """Heat maps of images ``indices`` (record positions): 3 x (B, K, h, w) float32 CPU tensors."""
        idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for AAH cache {self.path} of {len(self)} images")
        return tuple(torch.from_numpy(np.asarray(a[idx], dtype=np.float32)) for a in self.arrays)  # type: ignore[return-value]

    def index_of(self, path: str | Path) -> int:
        """Position of image ``path`` (absolute, or relative to the cache's image root)."""
        p = Path(path)
        try:
            return self._index[p.resolve().relative_to(self._root).as_posix()]
        except (ValueError, KeyError):
            pass
        parts = p.parts  # the dataset may have moved: match the longest known suffix
        for n in range(len(parts), 0, -1):
            key = "/".join(parts[-n:])
            if key in self._index:
                return self._index[key]
        raise CacheError(f"image {path} is not in AAH cache {self.path} ({len(self)} images)")

    # ------------------------------------------------------------------ open
    @staticmethod
    def open(
        out_dir: str | Path,
        attr_ckpt_dir: str | Path | None = None,
        records: Sequence[Any] | None = None,
        schema_names: Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        targets: np.ndarray | Tensor | None = None,
        schema: Any | None = None,
        normalize: str | None = None,
        method: str | None = None,
    ) -> AAHCache:
        """Open a finished cache, checking it against whatever inputs are given.

        ``method`` ("exact"/"fast"): how the maps must have been computed; with
        "fast" and ``attr_ckpt_dir``, also that the distilled predictor is unchanged.

        ``schema`` (an AttributeSchema) is an alternative to ``schema_names``;
        ``targets=None`` skips the targets check (it does not mean "predicted").

        Raises:
            CacheError: missing, incomplete, corrupt, or built from other inputs
                (the message names the cache and the difference).
        """
        out = Path(out_dir)
        partial = _partial(out)
        if not out.is_dir():
            if partial.is_dir():
                done, total = _progress(partial)
                raise CacheError(f"AAH cache {out} is incomplete: the build was interrupted after {done}/{total} "
                                 f"chunks (in {partial}); rerun `sangal aah` to finish it")
            raise CacheError(f"AAH cache {out} does not exist; build it with `sangal aah`")
        manifest = _read_manifest(out / MANIFEST, out)
        if not manifest.get("complete"):
            raise CacheError(f"AAH cache {out} is incomplete (manifest says complete=false); {REBUILD}")
        m = manifest
        if attr_ckpt_dir is not None:
            weights = Path(attr_ckpt_dir) / MODEL_FILE
            if not weights.is_file():
                raise CacheError(f"cannot check AAH cache {out}: {weights} does not exist")
            now = file_sha256(weights)
            if now != m["checkpoint_sha256"]:
                raise CacheError(f"AAH cache {out} is stale: built from checkpoint sha256 {m['checkpoint_sha256'][:12]}… "
                                 f"({m['checkpoint_path']}) but {attr_ckpt_dir} now has {now[:12]}…; {REBUILD}")
        if records is not None:
            _check_images(out, m["images"], image_list(records))
        if schema is not None and schema_names is None:
            schema_names = list(schema.names)
        if schema_names is not None and list(schema_names) != m["schema"]["names"]:
            diff = next((i for i, (a, b) in enumerate(zip(schema_names, m["schema"]["names"])) if a != b),
                        min(len(schema_names), len(m["schema"]["names"])))
            raise CacheError(f"AAH cache {out} was built for {len(m['schema']['names'])} attributes "
                             f"({', '.join(m['schema']['names'][:4])}, ...) but {len(schema_names)} were asked for; "
                             f"they first differ at position {diff}; {REBUILD}")
        if method is not None:
            _check_method(out, m, method, attr_ckpt_dir)
        for key, value in (("height", height), ("width", width), ("normalize", normalize)):
            if value is not None and value != m[key]:
                raise CacheError(f"AAH cache {out} was built with {key} {m[key]}, not {value}; {REBUILD}")
        if targets is not None:
            given = _targets_entry(targets if isinstance(targets, str)
                                   else np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets))
            if given != m["targets"]:
                built = (f"{m['targets']['mode']} classes" if m["targets"]["mode"] != "labels"
                         else f"other attribute labels (sha256 {m['targets']['sha256'][:12]}…)")
                wanted = "the attribute labels given" if given["mode"] == "labels" else f"{given['mode']} classes"
                raise CacheError(f"AAH cache {out} was built with {built}, not {wanted}; {REBUILD}")
        arrays = []
        for name, shape in zip(STAGE_FILES, m["stages"]):
            try:
                arr = np.load(out / name, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CacheError(f"AAH cache file {out / name} is corrupt or truncated ({exc}); {REBUILD}") from exc
            if list(arr.shape) != [m["images"]["count"], *shape] or arr.dtype != np.float16:
                raise CacheError(f"AAH cache file {out / name} holds {arr.dtype} {arr.shape}, "
                                 f"expected float16 {(m['images']['count'], *shape)}; {REBUILD}")
            arrays.append(arr)
        return AAHCache(out, manifest, arrays)

    # ----------------------------------------------------------------- build
    @staticmethod
    def build(
        out_dir: str | Path,
        attr_ckpt_dir: str | Path,
        records: Sequence[Any],
        height: int,
        width: int,
        targets: np.ndarray | Tensor | str | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        progress: bool = True,
        stop_after_chunks: int | None = None,
        chunk_size: int = 256,
        normalize: str = "max",
        method: str = "exact",
        amp: bool = False,
        channels_last: bool = False,
    ) -> AAHCache:
        """Compute the heat maps of ``records`` with the attribute checkpoint and store them.

        Args:
            targets: (N, K) attribute labels (``IGNORE_INDEX`` allowed) for
                label-guided maps (train split), None (or ``"predicted"``) for predicted
                classes, or ``"agnostic"`` for class-agnostic maps (:mod:`sangal.aah_modes`).
            chunk_size: images per resumable chunk.
            normalize: heat-map normalisation passed to ``attribute_heatmaps``.
            method: ``"exact"`` Grad-CAM (backward pass) or ``"fast"`` (forward only,
                :func:`sangal.gradcam_fast.fast_attribute_heatmaps`; needs ``sangal distill``).
            stop_after_chunks: testing hook: raise :class:`BuildInterrupted` after
                this many chunks of this call, as if the process had been killed.
        """
        out = Path(out_dir)
        records = list(records)
        if not records:
            raise ValueError(f"no images to cache in {out}")
        net, ckpt = load_model(attr_ckpt_dir, expected_kind="attribute", device=device)
        labels = None
        if targets is not None and not isinstance(targets, str):
            labels = np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets, dtype=np.int64)
            if labels.shape != (len(records), len(ckpt.arch["attr_classes"])):
                raise ValueError(f"targets must be (N, K) = ({len(records)}, {len(ckpt.arch['attr_classes'])}), "
                                 f"got {labels.shape}")
        manifest = _new_manifest(ckpt.path, ckpt.arch, records, height, width,
                                 targets if isinstance(targets, str) else labels, normalize, chunk_size,
                                 _stage_shapes(net, height, width, device))
        predictor = _method_setup(manifest, method, attr_ckpt_dir, device)
        if out.is_dir():
            changed = _changes(out / MANIFEST, manifest, (*_IDENTITY, *_METHOD_KEYS))
            if not changed:
                try:
                    return AAHCache.open(out)
                except CacheError as exc:
                    changed = [str(exc)]
            logger.info("rebuilding AAH cache %s: %s changed", out, ", ".join(changed))
        partial = _partial(out)
        start = _resume_point(partial, manifest)
        arrays = [np.lib.format.open_memmap(partial / name, mode="r+") for name in STAGE_FILES]
        total = manifest["num_chunks"]
        if start < total:
            from sangal.engine.precision import autocast
            from sangal.engine.precision import channels_last as to_channels_last

            manifest["precision"] = {"bf16_autocast": amp, "channels_last": channels_last}  # provenance only
            with autocast(torch.device(device), amp):
                _fill(to_channels_last(net, channels_last), records, labels, arrays, partial, manifest, start,
                      batch_size, device, num_workers, progress, stop_after_chunks, predictor)
        del arrays  # close the memmaps before the rename
        manifest.update(complete=True, **provenance())
        atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=1))
        replace_dir(partial, out)
        logger.info("AAH cache of %d images written to %s", len(records), out)
        return AAHCache.open(out)


def align_aah(aah: Sequence[Tensor], flipped: Tensor) -> Heatmaps:
    """Mirror the maps of horizontally flipped samples: 3 x (B, K, h, w), ``flipped`` (B,) bool.

    Only flipping is mirrored; pad-and-crop and random erasing are not applied
    to cached maps (see the module docstring).
    """
    mask = flipped.to(device=aah[0].device, dtype=torch.bool)[:, None, None, None]  # (B, 1, 1, 1)
    return tuple(torch.where(mask, a.flip(-1), a) for a in aah)  # type: ignore[return-value]


def _partial(out: Path) -> Path:
    """Where an unfinished build of ``out`` lives."""
    return out.with_name(out.name + ".partial")


def _progress(partial: Path) -> tuple[int, int]:
    """(finished chunks, total chunks) of a partial build; (0, 0) if unreadable."""
    try:
        doc = json.loads((partial / PROGRESS).read_text(encoding="utf-8"))
        return int(doc["done_chunks"]), int(doc["num_chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0


def _read_manifest(path: Path, out: Path) -> dict[str, Any]:
    """The manifest of cache ``out``; CacheError naming the file if missing or invalid."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"AAH cache {out} has no {MANIFEST}; {REBUILD}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"AAH cache manifest {path} is not valid JSON ({exc}); {REBUILD}") from exc
    required = (*_IDENTITY, "images", "checkpoint_path", "complete")
    missing = [k for k in required if k not in doc] if isinstance(doc, dict) else list(required)
    if missing:
        raise CacheError(f"AAH cache manifest {path} lacks {', '.join(missing)}; {REBUILD}")
    return doc


def _check_images(out: Path, built: dict[str, Any], now: dict[str, Any]) -> None:
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


def _stage_shapes(net: torch.nn.Module, height: int, width: int, device: str | torch.device) -> list[list[int]]:
    """(K, h, w) of the maps at layer2, layer3, layer4 for a height x width image."""
    with torch.no_grad():
        stages = net.forward_stages(torch.zeros(1, 3, height, width, device=device))
    k = net.num_attributes
    return [[k, int(a.shape[-2]), int(a.shape[-1])] for a in stages]


def _new_manifest(ckpt_path: Path, arch: dict[str, Any], records: list[Any], height: int, width: int,
                  labels: np.ndarray | str | None, normalize: str, chunk_size: int,
                  stages: list[list[int]]) -> dict[str, Any]:
    images = image_list(records)
    return {
        "format_version": FORMAT_VERSION, "complete": False,
        "checkpoint_path": str(Path(ckpt_path).resolve()),
        "checkpoint_sha256": file_sha256(Path(ckpt_path) / MODEL_FILE),
        "images_sha256": images["sha256"], "images": {"count": len(records), **images},
        "schema": _schema_entry(arch), "height": height, "width": width,
        "targets": _targets_entry(labels), "normalize": normalize,
        "transform": repr(build_transforms(height, width, train=False)),
        "chunk_size": chunk_size, "num_chunks": math.ceil(len(records) / chunk_size),
        "stages": stages, "dtype": "float16",
    }


def _resume_point(partial: Path, manifest: dict[str, Any]) -> int:
    """First unfinished chunk of a matching partial build; otherwise start a fresh one (returns 0)."""
    if partial.is_dir():
        done, _ = _progress(partial)
        changed = _changes(partial / MANIFEST, manifest, (*_IDENTITY, *_METHOD_KEYS, "chunk_size"))
        files_ok = all((partial / name).is_file() for name in STAGE_FILES)
        if not changed and files_ok:
            logger.info("resuming %s at chunk %d/%d", partial, done, manifest["num_chunks"])
            return done
        logger.info("starting %s over: the interrupted build used different %s",
                    partial, ", ".join(changed) or "files")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    n = manifest["images"]["count"]
    for name, shape in zip(STAGE_FILES, manifest["stages"]):
        np.lib.format.open_memmap(partial / name, mode="w+", dtype=np.float16, shape=(n, *shape)).flush()
    atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=1))
    _write_progress(partial, 0, manifest["num_chunks"])
    return 0


def _changes(path: Path, manifest: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """Names of the ``keys`` whose values in manifest file ``path`` differ from ``manifest``."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"unreadable {path.name}"]
    return [k for k in keys if not isinstance(old, dict) or old.get(k, _METHOD_KEYS.get(k)) != manifest[k]]


def _write_progress(partial: Path, done: int, total: int) -> None:
    atomic_write_text(partial / PROGRESS, json.dumps({"done_chunks": done, "num_chunks": total}))


def _fill(net: torch.nn.Module, records: list[Any], labels: np.ndarray | None, arrays: list[np.ndarray],
          partial: Path, manifest: dict[str, Any], start: int, batch_size: int, device: str | torch.device,
          num_workers: int, progress: bool, stop_after_chunks: int | None,
          predictor: torch.nn.Module | None = None) -> None:
    """Compute chunks ``start..`` into ``arrays``; flush and record progress after each chunk.

    With ``predictor`` (method "fast") the maps come from the forward pass alone.
    """
    n, cs, total = len(records), manifest["chunk_size"], manifest["num_chunks"]
    chunk_ends = {min(n, (c + 1) * cs): c + 1 for c in range(start, total)}  # last index + 1 -> chunks done
    batches = [list(range(i, min(i + batch_size, (c + 1) * cs, n)))
               for c in range(start, total) for i in range(c * cs, min(n, (c + 1) * cs), batch_size)]
    dataset = ImageDataset(records, build_transforms(manifest["height"], manifest["width"], train=False))
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    finished = 0
    with tqdm(total=n - start * cs, disable=not progress, unit="img", desc="AAH") as bar:
        for batch in loader:
            lo, hi = int(batch["index"][0]), int(batch["index"][-1]) + 1  # a contiguous range
            images = batch["image"].to(device)  # (B, 3, H, W)
            if manifest.get("precision", {}).get("channels_last"):
                images = images.contiguous(memory_format=torch.channels_last)
            t = None if labels is None else torch.from_numpy(labels[lo:hi]).to(device)  # (B, K)
            if predictor is not None:  # eval.aah=fast: forward only, layer4 exact (sangal.gradcam_fast)
                maps = fast_attribute_heatmaps(net, predictor, images, t, normalize=manifest["normalize"],
                                               agnostic=manifest["targets"]["mode"] == "agnostic")
            elif manifest["targets"]["mode"] == "agnostic":
                from sangal.aah_modes import exact_agnostic_heatmaps

                maps = exact_agnostic_heatmaps(net, images, manifest["normalize"])
            else:
                maps = attribute_heatmaps(net, images, t, normalize=manifest["normalize"])  # 3 x (B, K, h, w)
            for arr, m in zip(arrays, maps):
                if list(m.shape[1:]) != list(arr.shape[1:]):
                    raise RuntimeError(f"heat maps {tuple(m.shape)} do not fit cache array {arr.shape}")
                arr[lo:hi] = to_float16(m)
            bar.update(hi - lo)
            if hi in chunk_ends:
                for arr in arrays:
                    arr.flush()
                _write_progress(partial, chunk_ends[hi], total)
                finished += 1
                if stop_after_chunks is not None and finished >= stop_after_chunks and chunk_ends[hi] < total:
                    raise BuildInterrupted(f"stopped after {finished} chunks (stop_after_chunks)")


def _method_setup(manifest: dict[str, Any], method: str, attr_ckpt_dir: str | Path,
                  device: str | torch.device) -> torch.nn.Module | None:
    """Record ``method`` in the manifest; the distilled predictor for "fast" (CheckpointError if none)."""
    if method not in ("exact", "fast"):
        raise ValueError(f"method must be 'exact' or 'fast', got {method!r}")
    if method == "exact":
        manifest.update(_METHOD_KEYS)
        return None
    from sangal.engine.distill import load_map_predictor, predictor_sha256

    predictor = load_map_predictor(attr_ckpt_dir, device=device)
    manifest.update(method="fast", predictor_sha256=predictor_sha256(attr_ckpt_dir))
    return predictor


def _check_method(out: Path, m: dict[str, Any], method: str, attr_ckpt_dir: str | Path | None) -> None:
    """CacheError when cache ``out`` was computed another way (or with another distilled predictor)."""
    built = m.get("method", "exact")
    if built != method:
        raise CacheError(f"AAH cache {out} holds {built} heat maps, not {method} ones (eval.aah); {REBUILD}")
    if method == "fast" and attr_ckpt_dir is not None:
        from sangal.engine.distill import predictor_sha256

        if predictor_sha256(attr_ckpt_dir) != m.get("predictor_sha256"):
            raise CacheError(f"AAH cache {out} is stale: the map predictor in {attr_ckpt_dir} changed since "
                             f"it was built; {REBUILD}")


def to_float16(maps: Tensor) -> np.ndarray:
    """(B, K, h, w) float32 -> float16, clipped to the float16 range (raw "none" maps can be large)."""
    arr = maps.detach().float().cpu().numpy()
    if np.abs(arr).max(initial=0.0) > _F16_MAX:
        logger.warning("heat-map values above %.0f clipped to fit float16", _F16_MAX)
        arr = np.clip(arr, -_F16_MAX, _F16_MAX)
    return arr.astype(np.float16)
