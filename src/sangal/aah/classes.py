"""Every class's heat map at once, and the maps of any class choice read off them (soft and noisy included).

Eq. (1) differentiates the probability of ONE class per head. :func:`class_maps` takes them all in one
vectorised backward: for a two-class head only class 1 is differentiated (dp_0/dA = -dp_1/dA, so
S_0 = -S_1 exactly), for a multi-class head every class. Together with the probabilities this holds
whatever a class choice needs, so one cached pass serves every training-map mode:

* ``labels`` / ``predicted`` / a drawn class (``noisy``): ``ReLU(S_c)`` of the chosen class c (eq. 2);
* ``agnostic``: ``|S_1|`` for a two-class head, ``|S_pred|`` otherwise (:mod:`sangal.aah.modes`);
* ``soft``: ``sum_c p_c ReLU(S_c)``, the maps weighted by the attribute net's own probabilities, the same
  at training and test time by construction.

The signed maps are scaled per (sample, head, stage) by their largest magnitude, so they keep their digits
in float16; every mode's map is scale-free after its normalisation, and a soft mixture keeps its weights
because one head's classes share the factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sangal.aah.gradcam import attribute_heatmaps, normalize_heatmaps

__all__ = ["ClassMaps", "class_maps", "draw_classes", "fast_class_maps", "maps_for_mode"]

Heatmaps = tuple[Tensor, Tensor, Tensor]


@dataclass
class ClassMaps:
    """Signed per-class maps of a batch: ``probs`` (B, sum C_k), ``maps`` 3 x (B, sum C_k, h, w)."""

    probs: Tensor
    maps: tuple[Tensor, Tensor, Tensor]
    sizes: list[int]

    def predicted(self) -> Tensor:
        """(B, K) argmax class of every head."""
        return torch.stack([p.argmax(dim=1) for p in self.probs.split(self.sizes, dim=1)], dim=1)


def _columns_needed(sizes: list[int]) -> list[int]:
    """Columns differentiated: class 1 of a two-class head, every class of a larger head."""
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    return [o + c for o, size in zip(offsets, sizes) for c in ((1,) if size == 2 else range(size))]


def _expand(maps: Tensor, sizes: list[int]) -> Tensor:
    """(B, J, h, w) maps of the differentiated columns -> (B, sum C_k, h, w), class 0 of two-class heads = -S_1."""
    parts, j = [], 0
    for size in sizes:
        if size == 2:
            parts += [-maps[:, j:j + 1], maps[:, j:j + 1]]
            j += 1
        else:
            parts.append(maps[:, j:j + size])
            j += size
    return torch.cat(parts, dim=1)


def _scaled(maps: tuple[Tensor, ...], sizes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Divide each (sample, head, stage) by its largest magnitude over the head's classes and the positions."""
    member = _membership(sizes, maps[0])  # (sum C, K)
    out = []
    for m in maps:
        peak = m.abs().amax(dim=(-2, -1))  # (B, sum C)
        per_head = torch.stack([p.amax(dim=1) for p in peak.split(sizes, dim=1)], dim=1)  # (B, K)
        scale = (per_head @ member.t()).clamp_min(torch.finfo(torch.float32).tiny)  # (B, sum C)
        out.append(m / scale[:, :, None, None])
    return tuple(out)  # type: ignore[return-value]


def class_maps(net: nn.Module, images: Tensor) -> ClassMaps:
    """Exact Grad-CAM maps of every class (eqs. 1-2 without the ReLU), one vectorised backward pass."""
    sizes = list(net.num_classes)
    needed = torch.tensor(_columns_needed(sizes), device=images.device)
    seen: dict[str, Tensor] = {}

    def columns(probs: Tensor) -> Tensor:
        seen["probs"] = probs.detach().float()
        return needed[None, :].expand(probs.shape[0], -1)  # (B, J)

    with torch.enable_grad():
        maps = attribute_heatmaps(net, images, normalize="none", signed=True, columns=columns)
    return ClassMaps(seen["probs"], _scaled(tuple(_expand(m, sizes) for m in maps), sizes), sizes)


@torch.no_grad()
def fast_class_maps(net: nn.Module, predictor: nn.Module, images: Tensor) -> ClassMaps:
    """Every class's signed map from the forward pass alone: layer4 exact, layer2/3 distilled (sangal.aah.fast)."""
    from sangal.aah.fast import layer4_logit_maps

    sizes = list(net.num_classes)
    a2, a3, a4 = net.forward_stages(images)
    with torch.autocast(device_type=a4.device.type, enabled=False):
        logits = net.head_from_stage4(a4)
        probs = torch.cat([torch.softmax(z.float(), dim=1) for z in logits], dim=1)  # (B, sum C)
        z4 = layer4_logit_maps(net, a4)  # (B, sum C, h4, w4): exact logit maps, GAP'd they are the logits
        p2, p3 = predictor(a2.float(), a3.float(), z4)
        maps = tuple(_signed_all(p, probs, sizes) for p in (p2, p3, z4 / (a4.shape[-2] * a4.shape[-1])))
    return ClassMaps(probs, _scaled(maps, sizes), sizes)


def _membership(sizes: list[int], like: Tensor) -> Tensor:
    """(sum C_k, K) 0/1 matrix: the head of each class column (einsums with it trace cleanly to ONNX)."""
    head_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return torch.nn.functional.one_hot(head_of, len(sizes)).to(device=like.device, dtype=like.dtype)


def _signed_all(logit_maps: Tensor, probs: Tensor, sizes: list[int]) -> Tensor:
    """``y_c (P_c - sum_j y_j P_j)`` for every class column c (the head's own sum): (B, sum C, h, w)."""
    member = _membership(sizes, logit_maps)  # (sum C, K)
    expected = torch.einsum("bjhw,bj,jk->bkhw", logit_maps, probs, member)  # (B, K, h, w): sum_j y_j P_j per head
    return probs[:, :, None, None] * (logit_maps - torch.einsum("bkhw,jk->bjhw", expected, member))


def maps_for_mode(cm: ClassMaps, mode: str, classes: Tensor | None = None, normalize: str = "max") -> Heatmaps:
    """The (B, K, h, w) maps of a class choice: ``select`` (``classes`` (B, K) given), ``agnostic`` or ``soft``."""
    sizes = cm.sizes
    offsets = torch.tensor([0, *sizes[:-1]], device=cm.probs.device).cumsum(0)  # (K,)
    out = []
    for m in cm.maps:
        b, _, h, w = m.shape
        if mode == "soft":  # sum_c p_c ReLU(S_c) per head
            out.append(torch.einsum("bjhw,bj,jk->bkhw", torch.relu(m), cm.probs, _membership(sizes, m)))
            continue
        if mode == "agnostic":
            binary = torch.tensor([s == 2 for s in sizes], device=m.device)
            chosen = torch.where(binary, torch.ones_like(offsets), cm.predicted())
        elif mode == "select":
            chosen = classes.to(m.device)
        else:
            raise ValueError(f"mode must be select, agnostic or soft, got {mode!r}")
        picked = torch.gather(m, 1, (offsets + chosen)[:, :, None, None].expand(b, len(sizes), h, w))
        out.append(picked.abs() if mode == "agnostic" else torch.relu(picked))
    return tuple(normalize_heatmaps(m, normalize) for m in out)  # type: ignore[return-value]


def draw_classes(labels: Tensor, confusion: list[Tensor], generator: torch.Generator) -> Tensor:
    """Noisy training targets: for head k and true class t, a class drawn from ``confusion[k][t]`` (the attribute
    net's held-out P(prediction | truth)); unlabelled entries (< 0) stay as they are (-> predicted class)."""
    drawn = labels.clone()
    uniform = torch.rand(labels.shape, generator=generator)  # (B, K)
    for k, matrix in enumerate(confusion):
        known = labels[:, k] >= 0
        if bool(known.any()):
            cdf = matrix[labels[known, k]].cumsum(dim=1)  # (n, C_k)
            drawn[known, k] = torch.searchsorted(cdf, uniform[known, k:k + 1]).squeeze(1).clamp_max(cdf.shape[1] - 1)
    return drawn
