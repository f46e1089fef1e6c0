"""Forward-only AAH: exact layer4 Grad-CAM in closed form, distilled layer2/layer3 maps (eqs. 1-2).

Layer4, exactly. Each attribute head is GAP -> BatchNorm1d (eval) -> Linear, an
affine map of the pooled feature ``f = 1/(hw) sum_ij A_ij``. Folding the
BatchNorm into the linear layer gives per-class rows ``M_j`` (see
:func:`folded_heads`), so with ``y = softmax(z)`` and target class ``c``::

    d y_c / d A_ij = 1/(hw) * y_c * (M_c - sum_j y_j M_j)      (eq. 1; the same at every ij)
    L^k = ReLU( 1/(hw) * y_c * (Z_c - sum_j y_j Z_j) )          (eq. 2)

with ``Z_j = sum_d M_jd A^d`` the per-position logit contribution ("class
activation map") of class j. The gradient is constant over space, so eq. (2)'s
spatial mean is the gradient itself: no backward pass is needed.

Layer3 and layer2, by a light predictor. The same algebra holds at any stage
``s`` once ``Z_j`` is replaced by ``P^s_j``, the Grad-CAM map (before ReLU) of
*logit* j at that stage: d y_c / d A^s = y_c (d z_c / d A^s - sum_j y_j
d z_j / d A^s), because the chain rule through layer4 is linear in the
cotangent. Only the ``P^s_j`` need a backward pass, and they do not depend on
the target class. :class:`~sangal.models.fast_map_net.FastMapNet` regresses
them from the attribute net's own activations (layer s and the exact layer4
``Z``); the class choice, the softmax weighting and the sign stay exact
(:func:`combine_logit_maps`). Binary heads reduce to ``ReLU(+-(P_1 - P_0))``:
predicting the complementary map of the other class comes for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sangal.aah.gradcam import normalize_heatmaps, target_classes
from sangal.data.attributes import IGNORE_INDEX
from sangal.models.attribute_net import AttributeNet

__all__ = ["combine_logit_maps", "fast_attribute_heatmaps", "folded_heads", "heatmaps_from_stages",
           "layer4_channel_weights", "layer4_heatmaps", "layer4_logit_maps"]

Heatmaps = tuple[Tensor, Tensor, Tensor]


def folded_heads(net: AttributeNet) -> tuple[Tensor, Tensor]:
    """Eval-mode BN-FC heads folded into one affine map of the pooled feature.

    ``z = fc(bn(f)) = (W * s) f + (b + W (beta - mu * s))`` with
    ``s = gamma / sqrt(var + eps)``; all K heads stacked along the rows.

    Returns:
        weight (sum C_k, D) and bias (sum C_k,), float32 (float64 for a float64 net).
    """
    weights, biases = [], []
    dtype = torch.float64 if net.heads[0].fc.weight.dtype == torch.float64 else torch.float32
    for head in net.heads:
        bn, fc = head.bn, head.fc
        scale = bn.weight.to(dtype) / torch.sqrt(bn.running_var.to(dtype) + bn.eps)  # (D,)
        weights.append(fc.weight.to(dtype) * scale)  # (C_k, D)
        biases.append(fc.bias.to(dtype) + fc.weight.to(dtype) @ (bn.bias.to(dtype) - bn.running_mean.to(dtype) * scale))
    return torch.cat(weights), torch.cat(biases)


def layer4_logit_maps(net: AttributeNet, a4: Tensor) -> Tensor:
    """Per-position logit contributions ``Z_j = sum_d M_jd A^d``: a4 (B, D, h, w) -> (B, sum C_k, h, w).

    ``GAP(Z) + bias`` equals the heads' logits (eval-mode BatchNorm).
    """
    weight, _ = folded_heads(net)  # (sum C, D)
    return torch.einsum("jd,bdhw->bjhw", weight.to(a4.device), a4.float())


def combine_logit_maps(logit_maps: Tensor, probs: Tensor, classes: Tensor, sizes: list[int],
                       scale: float = 1.0, relu: bool = True) -> Tensor:
    """Eq. (2) from per-class logit Grad-CAM maps: ``ReLU(scale * y_c * (P_c - sum_j y_j P_j))`` per head.

    Args:
        logit_maps: (B, sum C_k, h, w) maps ``P_j`` of every class of every head.
        probs: (B, sum C_k) softmax probabilities, head by head.
        classes: (B, K) target class of each head.
        sizes: C_k of each head.
        scale: constant factor (``1/(hw)`` at layer4, from the GAP).
        relu: apply eq. (2)'s ReLU (distillation takes the signed maps).

    Returns:
        (B, K, h, w) float32 maps, ReLU'd unless ``relu=False``, not normalised.
    """
    b, _, h, w = logit_maps.shape
    device = logit_maps.device
    offsets = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0)  # (K,)
    columns = offsets + classes.to(device)  # (B, K) column of y_c
    membership = _membership(sizes, device, logit_maps.dtype)  # (sum C, K)
    expected = torch.einsum("bjhw,bj,jk->bkhw", logit_maps, probs, membership)  # (B, K, h, w) sum_j y_j P_j
    target = torch.gather(logit_maps, 1, columns[:, :, None, None].expand(b, len(sizes), h, w))  # (B, K, h, w) P_c
    y_c = torch.gather(probs, 1, columns)[:, :, None, None]  # (B, K, 1, 1)
    signed = scale * y_c * (target - expected)
    return torch.relu(signed) if relu else signed


def layer4_channel_weights(net: AttributeNet, probs: Tensor, classes: Tensor) -> Tensor:
    """Eq. (1)-(2)'s layer4 channel weights without the 1/(hw): ``y_c (M_c - sum_j y_j M_j)``, (B, K, D).

    Weights first, then one weighted channel sum (as the backward path does):
    subtracting folded weight rows keeps float32 precision, subtracting whole
    logit maps ``Z_c - sum_j y_j Z_j`` (sums over D channels) would cancel digits.
    """
    sizes = net.num_classes
    weight, _ = folded_heads(net)  # (sum C, D)
    weight = weight.to(device=probs.device, dtype=probs.dtype)
    offsets = torch.tensor([0, *sizes[:-1]], device=probs.device).cumsum(0)  # (K,)
    columns = offsets + classes  # (B, K)
    membership = _membership(sizes, probs.device, probs.dtype)  # (sum C, K)
    expected = torch.einsum("bj,jk,jd->bkd", probs, membership, weight)  # (B, K, D) sum_j y_j M_j
    y_c = torch.gather(probs, 1, columns)[:, :, None]  # (B, K, 1)
    return y_c * (weight[columns] - expected)  # (B, K, D)


@torch.no_grad()
def layer4_heatmaps(net: AttributeNet, a4: Tensor, logits: list[Tensor], classes: Tensor | None = None,
                    normalize: str = "max") -> Tensor:
    """Exact layer4 AAH from the forward pass alone (eqs. 1-2 in closed form): (B, K, h4, w4).

    Equal to :func:`sangal.aah.gradcam.attribute_heatmaps`' layer4 output for an
    eval-mode network; ``classes`` as there (labels, ``IGNORE_INDEX`` -> predicted).
    """
    dtype = torch.float64 if a4.dtype == torch.float64 else torch.float32  # float32 at least, as gradcam.py
    with torch.autocast(device_type=a4.device.type, enabled=False):
        probs = torch.cat([torch.softmax(z.to(dtype), dim=1) for z in logits], dim=1)  # (B, sum C)
        chosen = target_classes(logits, classes)  # (B, K)
        weights = layer4_channel_weights(net, probs, chosen) / (a4.shape[-2] * a4.shape[-1])  # (B, K, D)
        cam = torch.relu(torch.einsum("bkd,bdhw->bkhw", weights, a4.to(dtype)))  # (B, K, h4, w4)
        return normalize_heatmaps(cam, normalize)


def _membership(sizes: list[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """(sum C_k, K) 0/1 matrix: which head each concatenated class column belongs to."""
    head_of = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    return F.one_hot(head_of, len(sizes)).to(dtype)


@torch.no_grad()
def fast_attribute_heatmaps(net: AttributeNet, predictor: nn.Module, images: Tensor,
                            classes: Tensor | None = None, normalize: str = "max", mode: str = "predicted") -> Heatmaps:
    """AAH at layer2, layer3, layer4 from one forward pass of ``net`` (no backward).

    Layer4 is exact (:func:`layer4_heatmaps`); layer2 and layer3 combine the
    logit maps ``predictor`` regresses with the exact probabilities and target
    classes (:func:`combine_logit_maps`). ``net`` must be in eval mode (folded
    BatchNorm); ``normalize`` must be scale-free (``"max"``/``"minmax"``) since
    the predictor's maps have no calibrated scale.

    ``mode``: the class choice of :mod:`sangal.aah.modes`; ``labels`` and ``predicted`` follow ``classes``
    (None: predicted), ``agnostic`` gives |S| (of class 1 for two-class heads, of the predicted class
    otherwise; ``classes`` ignored).

    Returns:
        ``(aah2, aah3, aah4)``, float32 (B, K, h_s, w_s), like ``attribute_heatmaps``.
    """
    if net.training:
        raise ValueError("fast_attribute_heatmaps needs the attribute net in eval mode (folded BatchNorm)")
    if normalize == "none":
        raise ValueError("fast heat maps are only defined up to scale: use normalize='max' or 'minmax'")
    a2, a3, a4 = net.forward_stages(images)  # (B, C2, h2, w2), (B, C3, h3, w3), (B, D, h4, w4)
    logits = net.head_from_stage4(a4)  # K x (B, C_k)
    return heatmaps_from_stages(net, predictor, (a2, a3, a4), logits, classes, normalize, mode)


def heatmaps_from_stages(net: AttributeNet, predictor: nn.Module, stages: tuple[Tensor, Tensor, Tensor],
                         logits: list[Tensor], classes: Tensor | None, normalize: str,
                         mode: str = "predicted") -> Heatmaps:
    """:func:`fast_attribute_heatmaps` on an existing forward pass (distillation reuses it with grad)."""
    a2, a3, a4 = stages
    with torch.autocast(device_type=a4.device.type, enabled=False):
        probs = torch.cat([torch.softmax(z.float(), dim=1) for z in logits], dim=1)  # (B, sum C)
        sizes = net.num_classes
        agnostic = mode == "agnostic"
        if agnostic:  # class 1 of two-class heads (|S| is the same for either class), else the prediction
            binary = torch.tensor([c == 2 for c in sizes], device=a4.device)
            classes = torch.where(binary, 1, IGNORE_INDEX)[None, :].expand(a4.shape[0], -1)
        chosen = target_classes(logits, classes)  # (B, K)
        z4 = layer4_logit_maps(net, a4)  # (B, sum C, h4, w4)
        p2, p3 = predictor(a2.float(), a3.float(), z4)  # (B, sum C, h2, w2), (B, sum C, h3, w3)
        weights = layer4_channel_weights(net, probs, chosen) / (a4.shape[-2] * a4.shape[-1])  # (B, K, D)
        rectify = torch.abs if agnostic else torch.relu  # |S| (sangal.aah.modes) or eq. (2)'s ReLU
        cam4 = rectify(torch.einsum("bkd,bdhw->bkhw", weights, a4.float()))  # exact, as layer4_heatmaps
        cam3 = rectify(combine_logit_maps(p3, probs, chosen, sizes, relu=False))
        cam2 = rectify(combine_logit_maps(p2, probs, chosen, sizes, relu=False))
        aah2, aah3, aah4 = (normalize_heatmaps(m, normalize) for m in (cam2, cam3, cam4))
    return aah2, aah3, aah4
