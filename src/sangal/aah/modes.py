"""Which class an attribute heat map follows: the label, the prediction, or none (class-agnostic).

Eq. (1) differentiates ``y^k``, the probability of ONE class of head k. For a
two-class head the two choices are exact negatives (dp_0/dA = -dp_1/dA), so the
label-guided training map is ReLU(S) or ReLU(-S), picked by the label: the map
pattern encodes the attribute vector, close to an identity code the Re-ID net can
read, and at test time that code follows the attribute net's (imperfect)
predictions instead. ``agnostic`` removes the choice: the sum over classes of the
ReLU'd Grad-CAM maps, which for a two-class head is |S| = ReLU(S) + ReLU(-S), the
same whatever the label or prediction.

Modes (``train.aah_targets``):

* ``labels``    -- the paper: training maps follow the attribute labels, test maps the predictions.
* ``predicted`` -- training and test maps both follow the predictions.
* ``agnostic``  -- |S| at training and test time: for a two-class head the sum over its classes,
  independent of label and prediction; for a multi-class head |S| of the predicted class. One
  backward pass (``signed_fn``); without it, the sum over classes (C_max passes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from sangal.aah.gradcam import attribute_heatmaps, normalize_heatmaps
from sangal.config import Config
from sangal.data.attributes import IGNORE_INDEX
from sangal.data.setup import attribute_targets

__all__ = ["AAH_TARGETS", "aah_mode", "aah_targets_for", "class_agnostic_heatmaps", "eval_mode",
           "exact_agnostic_heatmaps"]

AAH_TARGETS = ("labels", "predicted", "agnostic")

MapFn = Callable[[Tensor | None], Sequence[Tensor]]


def eval_mode(targets_mode: str) -> str:
    """Cache mode of query/gallery maps for a training mode: never the labels."""
    return "agnostic" if targets_mode == "agnostic" else "predicted"


def class_agnostic_heatmaps(map_fn: MapFn, num_classes: Sequence[int], batch: int, device: torch.device | str,
                            normalize: str = "max", signed_fn: MapFn | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sum over each head's classes of its ReLU'd Grad-CAM maps (eq. 2), then normalised.

    Args:
        map_fn: targets (B, K) -> 3 maps (B, K, h, w) *un-normalised* (``normalize="none"``),
            e.g. ``lambda t: attribute_heatmaps(net, images, t, normalize="none")``.
        num_classes: classes per head (length K).
        batch: B.
        signed_fn: optional, like ``map_fn`` but without eq. 2's ReLU (``signed=True``): then ONE
            backward pass gives |S|, exact for two-class heads; multi-class heads (e.g. Market's
            4-class age) take |S| of their predicted class instead of the sum over classes.

    Returns:
        3 x (B, K, h, w) float32; for two-class heads exactly |S| before normalisation.
    """
    sizes = torch.tensor([int(c) for c in num_classes], device=device)  # (K,)
    if signed_fn is not None:
        # One pass: |S| of class 1 for two-class heads (= ReLU(S) + ReLU(-S), label- and prediction-free);
        # |S| of the predicted class for multi-class heads (IGNORE_INDEX -> predicted; never the label).
        targets = torch.where(sizes == 2, torch.ones_like(sizes), torch.full_like(sizes, IGNORE_INDEX))
        maps = signed_fn(targets[None, :].expand(batch, -1).contiguous())
        a2, a3, a4 = (normalize_heatmaps(m.float().abs(), normalize) for m in maps)
        return a2, a3, a4
    total: list[Tensor] | None = None
    for c in range(int(sizes.max())):
        valid = sizes > c  # (K,) heads that have a class c
        targets = torch.where(valid, torch.full_like(sizes, c), torch.zeros_like(sizes))  # (K,)
        maps = map_fn(targets[None, :].expand(batch, -1).contiguous())
        weight = valid.to(torch.float32)[None, :, None, None]  # (1, K, 1, 1)
        maps = [m.float() * weight.to(m.device) for m in maps]
        total = maps if total is None else [t + m for t, m in zip(total, maps)]
    assert total is not None
    a2, a3, a4 = (normalize_heatmaps(m, normalize) for m in total)
    return a2, a3, a4


def exact_agnostic_heatmaps(net, images: Tensor, normalize: str = "max") -> tuple[Tensor, Tensor, Tensor]:
    """Class-agnostic maps of an attribute net by exact Grad-CAM, in one signed backward pass."""
    return class_agnostic_heatmaps(
        lambda t: attribute_heatmaps(net, images, t, normalize="none"), net.num_classes, images.shape[0],
        images.device, normalize, signed_fn=lambda t: attribute_heatmaps(net, images, t, normalize="none", signed=True))


def aah_mode(cfg: Config, split: str) -> str:
    """Grad-CAM class of a split's maps: labels (train only), predicted or agnostic (sangal.aah.modes)."""
    return cfg.train.aah_targets if split == "train" else eval_mode(cfg.train.aah_targets)


def aah_targets_for(cfg: Config, table, records, split: str) -> np.ndarray | str | None:
    """Grad-CAM targets for AAHCache: labels (N, K) for label-guided maps, "agnostic", or None (predicted)."""
    mode = aah_mode(cfg, split)
    if mode == "labels":
        return attribute_targets(table, records, "train")
    return "agnostic" if mode == "agnostic" else None
