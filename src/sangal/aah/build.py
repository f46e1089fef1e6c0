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

from sangal.aah.fast import fast_attribute_heatmaps
from sangal.aah.gradcam import attribute_heatmaps
from sangal.aah.manifest import IDENTITY, MANIFEST, METHOD_KEYS, PROGRESS, STAGE_FILES, changed_keys, read_progress
from sangal.aah.modes import exact_agnostic_heatmaps
from sangal.aah.predictor import load_map_predictor, predictor_sha256
from sangal.data.dataset import ImageDataset
from sangal.data.transforms import build_transforms
from sangal.errors import CheckpointError
from sangal.store.files import atomic_write_text

__all__ = ["BuildInterrupted", "fill", "method_setup", "resume_point", "stage_shapes", "to_float16"]

logger = logging.getLogger(__name__)

F16_MAX = float(np.finfo(np.float16).max)


class BuildInterrupted(RuntimeError):
    """Raised by :meth:`AAHCache.build` when ``stop_after_chunks`` is reached (tests simulate a kill)."""


def stage_shapes(net: torch.nn.Module, height: int, width: int, device: str | torch.device) -> list[list[int]]:
    """(K, h, w) of the maps at layer2, layer3, layer4 for a height x width image."""
    with torch.no_grad():
        stages = net.forward_stages(torch.zeros(1, 3, height, width, device=device))
    k = net.num_attributes
    return [[k, int(a.shape[-2]), int(a.shape[-1])] for a in stages]


def resume_point(partial: Path, manifest: dict[str, Any]) -> int:
    """First unfinished chunk of a matching partial build; otherwise start a fresh one (returns 0)."""
    if partial.is_dir():
        done, _ = read_progress(partial)
        changed = changed_keys(partial / MANIFEST, manifest, (*IDENTITY, *METHOD_KEYS, "chunk_size"))
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
            if manifest.get("precision", {}).get("channels_last"):
                images = images.contiguous(memory_format=torch.channels_last)
            t = None if labels is None else torch.from_numpy(labels[lo:hi]).to(device)  # (B, K)
            if predictor is not None:  # eval.aah=fast: forward only, layer4 exact (sangal.aah.fast)
                maps = fast_attribute_heatmaps(net, predictor, images, t, normalize=manifest["normalize"],
                                               agnostic=manifest["targets"]["mode"] == "agnostic")
            elif manifest["targets"]["mode"] == "agnostic":
                maps = exact_agnostic_heatmaps(net, images, manifest["normalize"])
            else:
                maps = attribute_heatmaps(net, images, t, normalize=manifest["normalize"])  # 3 x (B, K, h, w)
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


def method_setup(manifest: dict[str, Any], method: str, attr_ckpt_dir: str | Path,
                  device: str | torch.device) -> torch.nn.Module | None:
    """Record ``method`` in the manifest; the distilled predictor for "fast" (CheckpointError if none)."""
    if method not in ("exact", "fast"):
        raise ValueError(f"method must be 'exact' or 'fast', got {method!r}")
    if method == "exact":
        manifest.update(METHOD_KEYS)
        return None
    predictor = load_map_predictor(attr_ckpt_dir, device=device)
    manifest.update(method="fast", predictor_sha256=predictor_sha256(attr_ckpt_dir))
    return predictor


def to_float16(maps: Tensor) -> np.ndarray:
    """(B, K, h, w) float32 -> float16, clipped to the float16 range (raw "none" maps can be large)."""
    arr = maps.detach().float().cpu().numpy()
    if np.abs(arr).max(initial=0.0) > F16_MAX:
        logger.warning("heat-map values above %.0f clipped to fit float16", F16_MAX)
        arr = np.clip(arr, -F16_MAX, F16_MAX)
    return arr.astype(np.float16)
