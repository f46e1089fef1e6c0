"""Filling an AAH cache: chunked, resumable computation of the maps into memory-mapped float16 arrays.

:meth:`sangal.aah.cache.AAHCache.build` drives it; a build killed part-way resumes at its first
unfinished chunk (``progress.json`` in ``<out>.partial/``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from sangal import choices
from sangal.aah.fast_map_files import load_fast_map_net, fast_map_net_sha256
from sangal.aah.manifest import IDENTITY, MANIFEST, METHOD_KEYS, PROGRESS, cache_files, changed_keys, read_progress
from sangal.aah.modes import attribute_maps
from sangal.data.dataset import ImageDataset
from sangal.data.transforms import build_transforms
from sangal.errors import CheckpointError
from sangal.store.files import atomic_write_text

__all__ = ["BuildInterrupted", "fill", "method_setup", "resume_point", "stage_shapes", "to_float16"]

logger = logging.getLogger(__name__)

F16_MAX = float(np.finfo(np.float16).max)


class BuildInterrupted(RuntimeError):
    """Raised by :meth:`AAHCache.build` when ``stop_after_chunks`` is reached (tests simulate a kill)."""


def stage_shapes(net: torch.nn.Module, height: int, width: int, device: str | torch.device,
                 mode: str = "predicted") -> list[list[int]]:
    """(K, h, w) of the maps at layer2, layer3, layer4 for a height x width image; a ``classes`` cache holds
    (sum C_k, h, w) per stage and then the (sum C_k,) probabilities."""
    with torch.no_grad():
        stages = net.forward_stages(torch.zeros(1, 3, height, width, device=device))
    if mode != "classes":
        return [[net.num_attributes, int(a.shape[-2]), int(a.shape[-1])] for a in stages]
    columns = sum(net.num_classes)
    return [*([columns, int(a.shape[-2]), int(a.shape[-1])] for a in stages), [columns]]


def resume_point(partial: Path, manifest: dict[str, Any]) -> int:
    """First unfinished chunk of a matching partial build; otherwise start a fresh one (returns 0)."""
    if partial.is_dir():
        done, _ = read_progress(partial)
        changed = changed_keys(partial / MANIFEST, manifest, (*IDENTITY, *METHOD_KEYS, "chunk_size"))
        files_ok = all((partial / name).is_file() for name in cache_files(manifest))
        if not changed and files_ok:
            logger.info("resuming %s at chunk %d/%d", partial, done, manifest["num_chunks"])
            return done
        logger.info("starting %s over: the interrupted build used different %s",
                    partial, ", ".join(changed) or "files")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    n = manifest["images"]["count"]
    for name, shape in zip(cache_files(manifest), manifest["stages"]):
        np.lib.format.open_memmap(partial / name, mode="w+", dtype=np.float16, shape=(n, *shape)).flush()
    atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=1))
    write_progress(partial, 0, manifest["num_chunks"])
    return 0


def write_progress(partial: Path, done: int, total: int) -> None:
    atomic_write_text(partial / PROGRESS, json.dumps({"done_chunks": done, "num_chunks": total}))


def fill(net: torch.nn.Module, records: list[Any], labels: np.ndarray | None, arrays: list[np.ndarray],
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
            if manifest.get("channels_last"):
                images = images.contiguous(memory_format=torch.channels_last)
            maps = _batch_maps(net, images, labels, lo, hi, manifest, predictor)
            for arr, m in zip(arrays, maps):
                if list(m.shape[1:]) != list(arr.shape[1:]):
                    raise RuntimeError(f"heat maps {tuple(m.shape)} do not fit cache array {arr.shape}")
                arr[lo:hi] = to_float16(m)
                if not np.isfinite(arr[lo:hi]).all():  # a hash would bind the NaNs for good
                    raise CheckpointError(f"attribute checkpoint {manifest['checkpoint_path']} gives non-finite "
                                          f"heat maps (first image of the batch: {records[lo].path}); its weights "
                                          f"are broken")
            bar.update(hi - lo)
            if hi in chunk_ends:
                for arr in arrays:
                    arr.flush()
                write_progress(partial, chunk_ends[hi], total)
                finished += 1
                if stop_after_chunks is not None and finished >= stop_after_chunks and chunk_ends[hi] < total:
                    raise BuildInterrupted(f"stopped after {finished} chunks (stop_after_chunks)")


def _batch_maps(net, images: Tensor, labels: np.ndarray | None, lo: int, hi: int, manifest: dict[str, Any],
                predictor: torch.nn.Module | None) -> list[Tensor]:
    """The arrays of one batch: its maps (a predictor given: forward only, layer4 exact), and for a ``classes``
    cache every class's signed map and the probabilities (:mod:`sangal.aah.classes`)."""
    mode = manifest["targets"]["mode"]
    if mode == "classes":
        from sangal.aah.classes import class_maps, fast_class_maps

        every = class_maps(net, images) if predictor is None else fast_class_maps(net, predictor, images)
        return [*every.maps, every.probs]
    t = None if labels is None else torch.from_numpy(labels[lo:hi]).to(images.device)  # (B, K)
    return list(attribute_maps(net, images, mode, t, manifest["normalize"], predictor))


def method_setup(manifest: dict[str, Any], method: str, attr_ckpt_dir: str | Path,
                  device: str | torch.device) -> torch.nn.Module | None:
    """Record ``method`` in the manifest; the distilled predictor for "fast" (CheckpointError if none)."""
    if method not in choices.MAP_METHODS:
        raise ValueError(f"method must be 'exact' or 'fast', got {method!r}")
    if method == "exact":
        manifest.update(METHOD_KEYS)
        return None
    predictor = load_fast_map_net(attr_ckpt_dir, device=device)
    manifest.update(method="fast", predictor_sha256=fast_map_net_sha256(attr_ckpt_dir))
    return predictor


def to_float16(maps: Tensor) -> np.ndarray:
    """(B, K, h, w) float32 -> float16, clipped to the float16 range (raw "none" maps can be large)."""
    arr = maps.detach().float().cpu().numpy()
    if np.abs(arr).max(initial=0.0) > F16_MAX:
        logger.warning("heat-map values above %.0f clipped to fit float16", F16_MAX)
        arr = np.clip(arr, -F16_MAX, F16_MAX)
    return arr.astype(np.float16)
