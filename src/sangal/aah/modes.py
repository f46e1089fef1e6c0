"""Which class an attribute heat map follows, and the one function that makes a batch of maps.

Eq. (1) differentiates ``y^k``, the probability of ONE class of head k. For a
two-class head the two choices are exact negatives (dp_0/dA = -dp_1/dA), so the
label-guided training map is ReLU(S) or ReLU(-S), picked by the label: the map
pattern encodes the attribute vector, close to an identity code the Re-ID net can
read, and at test time that code follows the attribute net's (imperfect)
predictions instead. ``agnostic`` removes the choice: the sum over classes of the
ReLU'd Grad-CAM maps, which for a two-class head is |S| = ReLU(S) + ReLU(-S), the
same whatever the label or prediction.

Modes (``train.aah_targets``, :class:`~sangal.aah.spec.MapSpec`):

* ``labels``    -- the paper: training maps follow the attribute labels, test maps the predictions.
* ``predicted`` -- training and test maps both follow the predictions.
* ``agnostic``  -- |S| at training and test time: for a two-class head the sum over its classes,
  independent of label and prediction; for a multi-class head |S| of the predicted class. One
  backward pass (``signed_fn``); without it, the sum over classes (C_max passes).
* ``soft``      -- sum_c p_c ReLU(S_c) at training and test time, weighted by the attribute net's own
  probabilities: training and test maps are made alike by construction (:mod:`sangal.aah.classes`).
* ``noisy``     -- label-guided training maps whose class is drawn from the attribute net's held-out
  confusion (a new draw at every step), so they carry the errors test maps carry; predicted test maps.

:func:`attribute_maps` is where a mode and a method (exact / fast) become maps: cache builds, test-time
prediction and export all call it; the online (dual-trace) training branch calls :func:`online_maps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sangal.aah.gradcam import attribute_heatmaps, attribute_heatmaps_from_output, normalize_heatmaps
from sangal.data.attributes import IGNORE_INDEX

__all__ = ["attribute_maps", "class_agnostic_heatmaps", "exact_agnostic_heatmaps", "online_maps"]

MapFn = Callable[[Tensor | None], Sequence[Tensor]]
Heatmaps = tuple[Tensor, Tensor, Tensor]


def attribute_maps(net: nn.Module, images: Tensor, mode: str, labels: Tensor | None = None, normalize: str = "max",
                   predictor: nn.Module | None = None) -> Heatmaps:
    """AAH of a batch at layer2, layer3, layer4 (eqs. 1-2): 3 x (B, K, h, w) float32.

    Args:
        net: the attribute network (eval mode for per-sample maps).
        mode: ``labels`` (with ``labels`` (B, K); ``IGNORE_INDEX`` -> predicted), ``predicted``, ``agnostic`` or
            ``soft`` (every class's map weighted by its probability, :mod:`sangal.aah.classes`).
        predictor: the distilled map predictor: forward-only maps (:mod:`sangal.aah.fast`); None: exact Grad-CAM.
    """
    if (mode == "labels") != (labels is not None):
        raise ValueError(f"maps of mode {mode!r} {'need' if mode == 'labels' else 'take no'} attribute labels")
    if mode == "soft":
        from sangal.aah.classes import class_maps, fast_class_maps, maps_for_mode

        every = class_maps(net, images) if predictor is None else fast_class_maps(net, predictor, images)
        return maps_for_mode(every, "soft", normalize=normalize)
    if predictor is not None:
        from sangal.aah.fast import fast_attribute_heatmaps

        return fast_attribute_heatmaps(net, predictor, images, labels, normalize=normalize, mode=mode)
    with torch.enable_grad():  # Grad-CAM needs autograd, also under a caller's no_grad
        if mode == "agnostic":
            return exact_agnostic_heatmaps(net, images, normalize)
        return attribute_heatmaps(net, images, labels, normalize=normalize)


def online_maps(out, mode: str, labels: Tensor | None, num_classes: Sequence[int], normalize: str) -> Heatmaps:
    """Maps from the online attribute branch's own forward pass ``out`` (the first of the dual trace's backward
    passes; the graph is kept for the attribute loss). ``labels``: the batch's, used by mode "labels" only."""
    if mode == "agnostic":
        return class_agnostic_heatmaps(
            lambda t: attribute_heatmaps_from_output(out, classes=t, normalize="none", retain_graph=True),
            num_classes, out.features.shape[0], out.features.device, normalize)
    return attribute_heatmaps_from_output(out, classes=labels if mode == "labels" else None, normalize=normalize,
                                          retain_graph=True)


def class_agnostic_heatmaps(map_fn: MapFn, num_classes: Sequence[int], batch: int, device: torch.device | str,
                            normalize: str = "max", signed_fn: MapFn | None = None) -> Heatmaps:
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


def exact_agnostic_heatmaps(net, images: Tensor, normalize: str = "max") -> Heatmaps:
    """Class-agnostic maps of an attribute net by exact Grad-CAM, in one signed backward pass."""
    return class_agnostic_heatmaps(
        lambda t: attribute_heatmaps(net, images, t, normalize="none"), net.num_classes, images.shape[0],
        images.device, normalize, signed_fn=lambda t: attribute_heatmaps(net, images, t, normalize="none", signed=True))
