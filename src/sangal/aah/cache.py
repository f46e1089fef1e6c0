"""Offline Attribute Attention Heat-map (AAH) cache (paper §3.1, special skill 3).

"The attribute classification network will complete the pretraining in
advance, and the attention parameters calculated offline (from AAH) will be
used in the Re-ID network training": the heat maps of every image are computed
once with :func:`sangal.aah.gradcam.attribute_heatmaps` from a trained attribute
checkpoint and read back during Re-ID training and evaluation.

Layout of a cache directory::

    manifest.json   what the maps were computed from (see below), complete=true, the sha256 of
                    each .npy file ("files") and of itself ("document_sha256"), checked on open
    aah2.npy        (N, K, h2, w2) float16, layer2 resolution   } memory-mapped
    aah3.npy        (N, K, h3, w3) float16, layer3 resolution   } (np.lib.format
    aah4.npy        (N, K, h4, w4) float16, layer4 resolution   }  .npy files)

The manifest binds the maps to their inputs: the attribute checkpoint
(model.safetensors sha256 and path), the ordered image list (relative paths,
file sizes and their hash), the attribute schema, the image size, the targets
(every class's map for the train split, from which any training-map mode is
read -- one exact pass --, the spec's test-time mode for query/gallery), the
heat-map normalisation, the method and the precision (float32, or bf16 autocast).
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

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sangal.aah.build import fill, method_setup, resume_point, stage_shapes
from sangal.aah.manifest import (
    IDENTITY,
    MANIFEST,
    METHOD_KEYS,
    REBUILD,
    cache_files,
    changed_keys,
    check_images,
    check_method,
    image_list,
    manifest_precision,
    new_manifest,
    partial_dir,
    read_manifest,
    read_progress,
    targets_entry,
)
from sangal.aah.spec import PRECISIONS, MapSpec, Targets, check_choice
from sangal.errors import CacheError
from sangal.runtime.precision import autocast
from sangal.runtime.precision import channels_last as to_channels_last
from sangal.store.checkpoint import MODEL_FILE, load_model
from sangal.store.files import (
    atomic_write_text,
    cached_sha256,
    file_sha256,
    provenance,
    replace_dir,
    seal_json,
    verify_sha256,
)

__all__ = ["AAHCache", "align_aah"]

logger = logging.getLogger(__name__)

Heatmaps = tuple[Tensor, Tensor, Tensor]


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
        """Heat maps of images ``indices`` (record positions): 3 x (B, K, h, w) float32 CPU tensors
        (a ``classes`` cache: (B, sum C_k, h, w), every class's scaled signed map)."""
        idx = self._rows(indices)
        return tuple(torch.from_numpy(np.asarray(a[idx], dtype=np.float32)) for a in self.arrays[:3])  # type: ignore[return-value]

    def class_maps(self, indices: Sequence[int] | Tensor | np.ndarray | int):
        """A ``classes`` cache's rows as :class:`~sangal.aah.classes.ClassMaps` (maps and probabilities)."""
        from sangal.aah.classes import ClassMaps

        if self.manifest["targets"]["mode"] != "classes":
            raise CacheError(f"AAH cache {self.path} holds {self.manifest['targets']['mode']} maps, not every class's")
        probs = torch.from_numpy(np.asarray(self.arrays[3][self._rows(indices)], dtype=np.float32))
        return ClassMaps(probs, self.get(indices), list(self.manifest["schema"]["num_classes"]))

    def _rows(self, indices) -> np.ndarray:
        idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for AAH cache {self.path} of {len(self)} images")
        return idx

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
    def open(root: str | Path, spec: MapSpec, split: str, *, attr_checkpoint: str | Path | None = None,
             records: Sequence[Any] | None = None, size: tuple[int, int] | None = None,
             schema: Any | None = None) -> AAHCache:
        """The cache of ``split`` that ``spec`` makes under ``root`` (:meth:`MapSpec.cache_dir`), checked against
        the spec (class choice, normalisation, method, precision) and whatever else is given (None: not checked).

        Raises:
            CacheError: missing, incomplete, corrupt, or built from other inputs (one line naming the difference).
        """
        height, width = size if size is not None else (None, None)
        return AAHCache.open_path(spec.cache_dir(root, split), attr_checkpoint, records, None, height, width,
                                  Targets(spec.cache_mode(split)), schema, spec.normalize, spec.split_method(split),
                                  spec.precision)

    @staticmethod
    def open_path(
        out_dir: str | Path,
        attr_ckpt_dir: str | Path | None = None,
        records: Sequence[Any] | None = None,
        schema_names: Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        targets: Targets | None = None,
        schema: Any | None = None,
        normalize: str | None = None,
        method: str | None = None,
        precision: str | None = None,
    ) -> AAHCache:
        """Open the finished cache in ``out_dir``, checking it against whatever inputs are given: the layer below
        :meth:`open`, for caches no MapSpec describes (the leak check's true-label test maps) and tests.

        ``method`` ("exact"/"fast"): how the maps must have been computed; with
        "fast" and ``attr_ckpt_dir``, also that the distilled predictor is unchanged.
        ``precision`` ("float32"/"bf16"): what they were computed in (caches of older versions: their record).

        ``schema`` (an AttributeSchema) is an alternative to ``schema_names``; an argument left at None is
        not checked (``targets=None`` included).

        Raises:
            CacheError: missing, incomplete, corrupt, or built from other inputs
                (the message names the cache and the difference).
        """
        out = Path(out_dir)
        partial = partial_dir(out)
        if not out.is_dir():
            if partial.is_dir():
                done, total = read_progress(partial)
                raise CacheError(f"AAH cache {out} is incomplete: the build was interrupted after {done}/{total} "
                                 f"chunks (in {partial}); rerun `sangal aah` to finish it")
            raise CacheError(f"AAH cache {out} does not exist; build it with `sangal aah`")
        manifest = read_manifest(out / MANIFEST, out)
        if not manifest.get("complete"):
            raise CacheError(f"AAH cache {out} is incomplete (manifest says complete=false); {REBUILD}")
        m = manifest
        if attr_ckpt_dir is not None:
            weights = Path(attr_ckpt_dir) / MODEL_FILE
            if not weights.is_file():
                raise CacheError(f"cannot check AAH cache {out}: {weights} does not exist")
            now = cached_sha256(weights)
            if now != m["checkpoint_sha256"]:
                raise CacheError(f"AAH cache {out} is stale: built from checkpoint sha256 {m['checkpoint_sha256'][:12]}… "
                                 f"({m['checkpoint_path']}) but {attr_ckpt_dir} now has {now[:12]}…; {REBUILD}")
        if records is not None:
            check_images(out, m["images"], image_list(records))
        if schema is not None and schema_names is None:
            schema_names = list(schema.names)
        if schema_names is not None and list(schema_names) != m["schema"]["names"]:
            diff = next((i for i, (a, b) in enumerate(zip(schema_names, m["schema"]["names"])) if a != b),
                        min(len(schema_names), len(m["schema"]["names"])))
            raise CacheError(f"AAH cache {out} was built for {len(m['schema']['names'])} attributes "
                             f"({', '.join(m['schema']['names'][:4])}, ...) but {len(schema_names)} were asked for; "
                             f"they first differ at position {diff}; {REBUILD}")
        if method is not None:
            check_method(out, m, method, attr_ckpt_dir)
        if precision is not None and manifest_precision(m) != precision:
            raise CacheError(f"AAH cache {out} holds maps computed in {manifest_precision(m)}, not {precision} "
                             f"(train.amp); {REBUILD}")
        for key, value in (("height", height), ("width", width), ("normalize", normalize)):
            if value is not None and value != m[key]:
                raise CacheError(f"AAH cache {out} was built with {key} {m[key]}, not {value}; {REBUILD}")
        if targets is not None:
            given = targets_entry(targets)
            if given != m["targets"]:
                built = (f"{m['targets']['mode']} classes" if m["targets"]["mode"] != "labels"
                         else f"other attribute labels (sha256 {m['targets']['sha256'][:12]}…)")
                wanted = "the attribute labels given" if given["mode"] == "labels" else f"{given['mode']} classes"
                raise CacheError(f"AAH cache {out} was built with {built}, not {wanted}; {REBUILD}")
        for name, sha in (m.get("files") or {}).items():  # caches of older versions recorded none
            verify_sha256(out / name, sha, CacheError, REBUILD)
        arrays = []
        for name, shape in zip(cache_files(m), m["stages"]):
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
    def build(root: str | Path, spec: MapSpec, split: str, attr_checkpoint: str | Path, records: Sequence[Any],
              size: tuple[int, int], **options: Any) -> AAHCache:
        """Compute (or resume, or keep when up to date) the cache of ``split`` that ``spec`` makes under ``root``:
        the train split's every class's exact maps, a test split's maps of its mode and method, in the spec's
        precision. ``options``: :meth:`build_path`'s batch_size, device, num_workers, progress, chunk_size,
        channels_last, stop_after_chunks."""
        return AAHCache.build_path(spec.cache_dir(root, split), attr_checkpoint, records, size[0], size[1],
                                   Targets(spec.cache_mode(split)), normalize=spec.normalize,
                                   method=spec.split_method(split), precision=spec.precision, **options)

    @staticmethod
    def build_path(
        out_dir: str | Path,
        attr_ckpt_dir: str | Path,
        records: Sequence[Any],
        height: int,
        width: int,
        targets: Targets,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        progress: bool = True,
        stop_after_chunks: int | None = None,
        chunk_size: int = 256,
        normalize: str = "max",
        method: str = "exact",
        precision: str = "float32",
        channels_last: bool = False,
    ) -> AAHCache:
        """Compute the heat maps of ``records`` with the attribute checkpoint and store them in ``out_dir`` (the
        layer below :meth:`build`, for caches no MapSpec describes).

        Args:
            targets: what the maps follow (:class:`~sangal.aah.spec.Targets`): label-guided maps with
                their (N, K) labels (``IGNORE_INDEX`` allowed; train split), predicted classes,
                class-agnostic maps (:mod:`sangal.aah.modes`), or every class's (``classes``).
            chunk_size: images per resumable chunk.
            normalize: heat-map normalisation passed to ``attribute_heatmaps``.
            method: ``"exact"`` Grad-CAM (backward pass) or ``"fast"`` (forward only,
                :func:`sangal.aah.fast.fast_attribute_heatmaps`; needs ``sangal distill``).
            precision: ``"float32"``, or ``"bf16"`` autocast; part of the cache's identity.
            stop_after_chunks: testing hook: raise :class:`BuildInterrupted` after
                this many chunks of this call, as if the process had been killed.
        """
        out = Path(out_dir)
        records = list(records)
        if not records:
            raise ValueError(f"no images to cache in {out}")
        net, ckpt = load_model(attr_ckpt_dir, expected_kind="attribute", device=device)
        labels = None if targets.labels is None else np.asarray(targets.labels, dtype=np.int64)
        if labels is not None and labels.shape != (len(records), len(ckpt.arch["attr_classes"])):
            raise ValueError(f"targets must be (N, K) = ({len(records)}, {len(ckpt.arch['attr_classes'])}), "
                             f"got {labels.shape}")
        check_choice("precision", precision, PRECISIONS, ValueError)
        manifest = new_manifest(ckpt.path, ckpt.arch, records, height, width, targets, normalize, chunk_size,
                                stage_shapes(net, height, width, device, targets.mode), precision)
        predictor = method_setup(manifest, method, attr_ckpt_dir, device)
        if out.is_dir():
            changed = changed_keys(out / MANIFEST, manifest, (*IDENTITY, *METHOD_KEYS))
            if not changed:
                try:
                    return AAHCache.open_path(out)
                except CacheError as exc:
                    changed = [str(exc)]
            logger.info("rebuilding AAH cache %s: %s changed", out, ", ".join(changed))
        partial = partial_dir(out)
        start = resume_point(partial, manifest)
        arrays = [np.lib.format.open_memmap(partial / name, mode="r+") for name in cache_files(manifest)]
        total = manifest["num_chunks"]
        if start < total:
            manifest["channels_last"] = channels_last  # provenance only
            with autocast(torch.device(device), precision == "bf16", dtype=torch.bfloat16):
                fill(to_channels_last(net, channels_last), records, labels, arrays, partial, manifest, start,
                      batch_size, device, num_workers, progress, stop_after_chunks, predictor)
        del arrays  # close the memmaps before the rename
        manifest.update(complete=True, files={n: file_sha256(partial / n) for n in cache_files(manifest)},
                        **provenance())
        atomic_write_text(partial / MANIFEST, json.dumps(seal_json(manifest), indent=1))
        replace_dir(partial, out)
        logger.info("AAH cache of %d images written to %s", len(records), out)
        return AAHCache.open_path(out)


def align_aah(aah: Sequence[Tensor], flipped: Tensor) -> Heatmaps:
    """Mirror the maps of horizontally flipped samples: 3 x (B, K, h, w), ``flipped`` (B,) bool.

    Only flipping is mirrored; pad-and-crop and random erasing are not applied
    to cached maps (see the module docstring).
    """
    mask = flipped.to(device=aah[0].device, dtype=torch.bool)[:, None, None, None]  # (B, 1, 1, 1)
    return tuple(torch.where(mask, a.flip(-1), a) for a in aah)  # type: ignore[return-value]
