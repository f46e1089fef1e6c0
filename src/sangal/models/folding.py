"""Eval-mode BatchNorm folded into the convolution before it: the same function with one operation fewer per pair.

Exact Grad-CAM (:mod:`sangal.aah.gradcam`) carries every attribute's gradient back through layer3 and layer4; on
CPU a third of that backward was BatchNorm's, which in eval mode is a fixed per-channel affine map and folds into
the preceding convolution's weights and bias (``torch.nn.utils.fusion``). The folded copy computes the same maps
up to float rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]

#: Largest difference of a folded copy's stage outputs from the original's, relative to their largest value.
TOLERANCE = 1e-4


def fold_batchnorm(net: nn.Module, probe: Tensor) -> nn.Module:
    """A copy of an eval-mode ``net`` whose (Conv2d, BatchNorm2d) children pairs are folded, or ``net`` itself
    when it has none or the copy's ``forward_stages(probe)`` differs (a BatchNorm that does not follow its
    convolution in ``forward``)."""
    if net.training or not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        return net
    folded = copy.deepcopy(net)
    if not _fold_children(folded):
        return net
    with torch.no_grad():
        if not all(_close(a, b) for a, b in zip(net.forward_stages(probe), folded.forward_stages(probe))):
            return net
    return folded


def _fold_children(module: nn.Module) -> int:
    """Fold every child Conv2d directly followed by its BatchNorm2d, in place, recursively; the number folded."""
    names, folded = list(module._modules), 0
    for first, second in zip(names, names[1:]):
        conv, bn = module._modules[first], module._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats \
                and conv.out_channels == bn.num_features and not (conv.training or bn.training):
            fused = fuse_conv_bn_eval(conv, bn)
            if conv.weight.is_contiguous(memory_format=torch.channels_last):
                fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
            module._modules[first], module._modules[second] = fused, nn.Identity()
            folded += 1
    return folded + sum(_fold_children(child) for child in module.children())


def _close(a: Tensor, b: Tensor) -> bool:
    return bool((a - b).abs().max() <= TOLERANCE * a.abs().max().clamp_min(torch.finfo(a.dtype).tiny))
