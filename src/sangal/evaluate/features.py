"""Retrieval features of a Re-ID model over a loader (extraction only; scoring is in sangal.metrics).

:func:`extract_features` runs a :class:`~sangal.models.reid_net.ReIDNet` in
eval mode without gradients and returns a :class:`FeatureSet`: the BN-neck
features (optionally averaged with those of the horizontally mirrored image
and L2-normalised), ids, cameras, paths and the softmax outputs of the
model's own attribute heads.

SAN-GAL models need the attribute attention heat maps of every batch; an
``aah_fn(batch) -> (aah2, aah3, aah4)`` supplies them, either from the offline
cache (:func:`aah_from_cache`) or computed on the fly from the attribute
network with predicted classes (:func:`aah_from_net`). For the mirrored image
the maps are mirrored too (``torch.flip(dims=[-1])``), as a flipped input
moves the attributes to the mirrored positions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["FeatureSet", "AAHFn", "extract_features", "aah_from_cache", "aah_from_net"]

logger = logging.getLogger(__name__)

Heatmaps = tuple[Tensor, Tensor, Tensor]
#: batch dict (as an ImageDataset loader yields it) -> heat maps at layer2, layer3, layer4, each (B, K, h, w)
AAHFn = Callable[[dict[str, Any]], Sequence[Tensor]]


@dataclass
class FeatureSet:
    """Features of N images, in loader order.

    Attributes:
        feats: (N, D) float32, L2-normalised when extracted with ``normalize=True``.
        pids: (N,) int64 identity labels.
        camids: (N,) int64 camera indices.
        paths: N image paths.
        attr_probs: K arrays (N, C_k) of attribute-head probabilities, or None
            (model without attribute heads).
    """

    feats: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]
    attr_probs: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    device: str | torch.device = "cpu",
    flip: bool = True,
    aah_fn: AAHFn | None = None,
    normalize: bool = True,
    progress: bool = True,
) -> FeatureSet:
    """Embed every image of ``loader`` with ``model``.

    Args:
        model: a ReIDNet (put in eval mode for the call, its mode restored after).
        loader: yields ImageDataset batches (``image``, ``pid``, ``camid``, ``index``, ``path``).
        flip: average the features (and attribute probabilities) of each image
            and its horizontal mirror.
        aah_fn: heat maps for mode ``"san-gal"`` models; must be None otherwise.
        normalize: L2-normalise the final (flip-averaged) features.

    Raises:
        ValueError: a san-gal model without ``aah_fn``, or ``aah_fn`` for another mode.
    """
    mode = getattr(model, "mode", None)
    if mode == "san-gal" and aah_fn is None:
        raise ValueError("a ReIDNet in mode 'san-gal' needs heat maps: pass aah_fn=aah_from_cache(cache) "
                         "or aah_fn=aah_from_net(attr_net)")
    if mode is not None and mode != "san-gal" and aah_fn is not None:
        raise ValueError(f"aah_fn was given for a ReIDNet in mode {mode!r}, which does not use heat maps")
    was_training = model.training
    model.eval()
    feats: list[Tensor] = []
    probs: list[list[Tensor]] = []
    pids: list[Tensor] = []
    camids: list[Tensor] = []
    paths: list[str] = []
    try:
        for batch in tqdm(loader, desc="features", unit="batch", disable=not progress, leave=False):
            images = batch["image"].to(device)  # (B, 3, H, W)
            aah = _heatmaps(aah_fn, batch, device)
            f, p = _embed(model, images, aah)  # (B, D), K x (B, C_k) | None
            if flip:
                mirrored = None if aah is None else tuple(a.flip(-1) for a in aah)
                f2, p2 = _embed(model, images.flip(-1), mirrored)
                f = (f + f2) / 2
                p = None if p is None or p2 is None else [(a + b) / 2 for a, b in zip(p, p2)]
            feats.append(f.cpu())
            if p is not None:
                probs.append([t.cpu() for t in p])
            pids.append(torch.as_tensor(batch["pid"]).reshape(-1))
            camids.append(torch.as_tensor(batch["camid"]).reshape(-1))
            paths.extend(_paths(batch, loader))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no images")
    all_feats = torch.cat(feats)  # (N, D)
    if normalize:
        all_feats = F.normalize(all_feats, dim=1)
    attr_probs = [torch.cat(k).numpy() for k in zip(*probs)] if probs else None
    logger.info("extracted %d features of dimension %d", all_feats.shape[0], all_feats.shape[1])
    return FeatureSet(all_feats.numpy().astype(np.float32), torch.cat(pids).numpy().astype(np.int64),
                      torch.cat(camids).numpy().astype(np.int64), paths, attr_probs)


def _embed(model: nn.Module, images: Tensor, aah: Heatmaps | None) -> tuple[Tensor, list[Tensor] | None]:
    """BN-neck features (B, D) float32 and attribute-head softmax K x (B, C_k) (or None)."""
    out = model(images) if aah is None else model(images, aah)
    probs = None if not out.attr_logits else [torch.softmax(z.float(), dim=1) for z in out.attr_logits]
    return out.features.float(), probs


def _heatmaps(aah_fn: AAHFn | None, batch: dict[str, Any], device: str | torch.device) -> Heatmaps | None:
    if aah_fn is None:
        return None
    maps = tuple(aah_fn(batch))
    if len(maps) != 3:
        raise ValueError(f"aah_fn must return 3 heat-map tensors (layer2, layer3, layer4), got {len(maps)}")
    return tuple(m.to(device=device, dtype=torch.float32) for m in maps)  # type: ignore[return-value]


def _paths(batch: dict[str, Any], loader: Iterable[Any]) -> list[str]:
    """Image paths of a batch: its ``path`` entry, else looked up from the dataset's records."""
    if "path" in batch:
        return [str(p) for p in batch["path"]]
    records = getattr(getattr(loader, "dataset", None), "records", None)
    if records is None:
        raise ValueError("batches carry no 'path' and the loader's dataset has no records to look them up")
    return [str(records[int(i)].path) for i in batch["index"]]


def aah_from_cache(cache: Any) -> AAHFn:
    """aah_fn reading the maps of ``batch["index"]`` from an :class:`~sangal.aah.cache.AAHCache`.

    The cache must have been built for the same records, in the same order, as the loader's dataset.
    """

    def fn(batch: dict[str, Any]) -> Sequence[Tensor]:
        return cache.get(batch["index"])  # 3 x (B, K, h, w) float32

    return fn


def aah_from_net(attr_net: nn.Module, normalize: str = "max", predictor: nn.Module | None = None,
                 agnostic: bool = False) -> AAHFn:
    """aah_fn computing heat maps on the fly with the attribute network's predicted classes.

    ``attr_net`` is put in eval mode (per-sample maps); its device is used for
    the images. ``normalize`` should match the one the Re-ID model was trained with.
    Without ``predictor``: exact Grad-CAM (a backward pass per batch); with the
    distilled map predictor (``eval.aah=fast``): forward only, layer4 exact
    (:func:`sangal.aah.fast.fast_attribute_heatmaps`). ``agnostic``: the class-agnostic maps
    of :mod:`sangal.aah.modes`, for models trained with ``train.aah_targets=agnostic``.
    """
    from sangal.aah.fast import fast_attribute_heatmaps
    from sangal.aah.gradcam import attribute_heatmaps

    attr_net.eval()
    device = next(attr_net.parameters()).device
    if predictor is not None:
        predictor.to(device).eval()

    def fn(batch: dict[str, Any]) -> Sequence[Tensor]:
        images = batch["image"].to(device)  # (B, 3, H, W)
        if predictor is not None:
            return fast_attribute_heatmaps(attr_net, predictor, images, None, normalize=normalize, agnostic=agnostic)
        with torch.enable_grad():  # Grad-CAM needs autograd even inside extract_features' no_grad
            if agnostic:
                from sangal.aah.modes import exact_agnostic_heatmaps

                return exact_agnostic_heatmaps(attr_net, images, normalize)
            return attribute_heatmaps(attr_net, images, None, normalize=normalize)

    return fn
