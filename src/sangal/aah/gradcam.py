"""Attribute Attention Heat maps (AAH): batched Grad-CAM, paper §3.2, eqs. (1)-(2).

For every attribute k the paper takes ``y^k``, the softmax probability of one
class of head k, differentiates it with respect to the activation maps ``A``
at the three scale-changing stages of the attribute network's backbone
(outputs of layer2, layer3, layer4; eq. 1), averages the gradient over space
to get one weight per channel, and keeps the ReLU of the weighted channel sum
(eq. 2)::

    w_c^k   = 1/(h w) * sum_ij  d y^k / d A_ij^c                    (eqs. 1-2)
    L^k     = ReLU( sum_c  w_c^k * A^c )                            (eq. 2)

Which class: the ground-truth label of attribute k when labels are given
("guided by attribute label"; entries equal to ``IGNORE_INDEX`` fall back to
the predicted class), otherwise the predicted class (test time).

Cost: all K attributes at all three stages come from ONE forward pass and ONE
backward pass vectorised over the attributes (K one-hot cotangents at once).
The backward stops at the layer2 output and computes no parameter gradient.
Two ways to run it:

* functional path (:func:`attribute_heatmaps` with no BatchNorm in train mode
  and no autocast — the usual eval-mode/offline case): stem..layer2 run under
  ``no_grad``; layer3, layer4 and the heads are differentiated with
  ``torch.func.vjp`` stage by stage (the chain rule across the staged
  forward: heads -> layer4 -> layer3) and the backward is ``torch.func.vmap``-ed
  over the K cotangents, so every convolution backward runs once on a
  K-times-larger batch (``chunk`` times, see below).
* graph path (:func:`attribute_heatmaps_from_output`, BatchNorm in train
  mode, autocast, ``create_graph=True``): ``torch.autograd.grad(...,
  is_grads_batched=True)`` on the autograd graph of a regular forward pass.
  Same result, one call, but PyTorch implements ``is_grads_batched`` with its
  legacy vmap prototype, which has no batching rule for the convolution
  backward and loops over the K attributes internally (in C++), so it is
  slower. (``torch.func`` cannot be used there: train-mode BatchNorm updates
  its running statistics in place, which function transforms refuse, and
  torch 2.14's vmapped BatchNorm backward rejects bf16 activations with
  float32 statistics.)

``chunk`` splits the K attributes into groups of that size, one vectorised
backward per group (each runs on chunk x B samples; a group of one is a plain
call, without vmap). By default (:func:`default_chunk`) all K attributes go at
once on accelerators; on CPU a group holds about :data:`CPU_VECTOR_PIXELS`
input pixels (samples x H x W), so from 128x64 at batch 8 up the attributes go
one at a time: there vmap's batching rules, which copy the batched gradients at
every layer, cost more than they save, while on tiny inputs per-call overheads
dominate and grouping pays (``benchmarks/aah_speed.py``). In that large regime
the net's eval-mode BatchNorms are folded into their convolutions first
(:mod:`sangal.models.folding`: the same maps, a third less backward for
MobileNetV2, worth the copy of the net). Smaller chunks also bound memory.

Normalisation (applied per (sample, attribute) map before ASAM; ``normalize``):

* ``"max"`` (default): divide each map by its maximum, so every non-zero map
  peaks at exactly 1; an all-zero map stays zero (no NaN).
* ``"minmax"``: ``(L - min) / (max - min + 1e-7)``, exactly the scale of the
  ``grad-cam`` package (``pytorch_grad_cam.utils.image.scale_cam_image``).
  Since ``L >= 0`` after ReLU and Grad-CAM maps usually contain zeros, this is
  normally the same as ``"max"`` up to the 1e-7.
* ``"none"``: the raw ReLU maps of eq. (2).

The returned maps are float32 and detached: the paper discards the Grad-CAM
gradients ("After the first calculation of Grad-CAM, the gradient in the
activation maps is discarded", §3 special skill 3). ``create_graph=True``
keeps them differentiable instead (second-order experiments only).

Modes: Grad-CAM is normally computed with the attribute network in eval mode
(the offline AAH cache the paper uses in practice). With BatchNorm in train
mode the samples of a batch are coupled through the batch statistics, so the
map of one sample also reflects the others; in the online dual-trace mode
(:func:`attribute_heatmaps_from_output`, reusing the training forward pass
and then backpropagating the attribute loss — "backpropagated twice") the
caller decides which mode the network is in.

Mixed precision: works under ``torch.autocast``; the softmax, the channel
weights and the weighted sums are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from sangal import choices
from sangal.data.attributes import IGNORE_INDEX
from sangal.models.attribute_net import AttributeNet, AttributeOutput
from sangal.models.folding import fold_batchnorm

__all__ = [
    "NORMALIZE_MODES",
    "attribute_heatmaps",
    "attribute_heatmaps_from_output",
    "default_chunk",
    "normalize_heatmaps",
    "target_classes",
]

NORMALIZE_MODES = choices.MAP_NORMALIZE

#: Denominator guard of the "minmax" mode, as in pytorch_grad_cam's scale_cam_image.
MINMAX_EPS = 1e-7

#: Input pixels (samples x H x W) per vectorised backward on CPU by default: 24 images of 64x32.
CPU_VECTOR_PIXELS = 24 * 64 * 32

Heatmaps = tuple[Tensor, Tensor, Tensor]
#: probabilities (B, sum C_k) -> (B, J) class columns whose Grad-CAM maps are wanted (sangal.aah.classes)
Columns = Callable[[Tensor], Tensor]


def attribute_heatmaps(
    net: AttributeNet,
    images: Tensor,
    classes: Tensor | None = None,
    normalize: str = "max",
    create_graph: bool = False,
    chunk: int | None = None,
    signed: bool = False,
    columns: Columns | None = None,
) -> Heatmaps:
    """AAH of all K attributes at layer2, layer3 and layer4 (eqs. 1-2).

    One forward pass of ``net`` and one backward pass vectorised over the K
    attributes (``chunk`` aside). ``net`` is used in its current mode; use
    ``net.eval()`` for per-sample maps (and the fast functional path).

    Args:
        net: the attribute network.
        images: (B, 3, H, W) on the network's device.
        classes: optional (B, K) int64 class of each head the maps follow (e.g. the attribute labels);
            ``IGNORE_INDEX`` entries use the predicted class. ``None``: predicted classes everywhere.
        normalize: ``"max"``, ``"minmax"`` or ``"none"`` (see module docstring).
        create_graph: keep the maps differentiable (w.r.t. the network's
            parameters and the images) instead of detached.
        chunk: attributes per vectorised backward; ``None``: :func:`default_chunk`.
        signed: skip eq. 2's ReLU (the weighted channel sum S itself; for
            :mod:`sangal.aah.modes`, where |S| is the class-agnostic map); use ``normalize="none"``.
        columns: maps per class column instead of per attribute (:mod:`sangal.aah.classes`):
            ``columns(probs (B, sum C_k)) -> (B, J)`` column indices; then 3 x (B, J, h, w); ``classes`` unused.

    Returns:
        ``(aah2, aah3, aah4)``, float32 (B, K, h_s, w_s) at the layer2, layer3
        and layer4 output resolutions (H/8, H/16, H/16 for last stride 1).
    """
    _check_normalize(normalize)
    chunk = _check_chunk(chunk, len(net.heads), images.shape[0], images.shape[-2] * images.shape[-1], images.device)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attribute_heatmaps needs autograd; call it outside torch.inference_mode()")
    if create_graph:
        with torch.enable_grad():
            out = net(images)
        return _graph_grad_cam(out.logits, out.stages, classes, normalize, True, True, chunk, signed, columns)
    if _has_training_batchnorm(net) or torch.is_autocast_enabled(images.device.type):
        with torch.no_grad():
            a2 = net.forward_to_stage2(images)  # (B, C2, H/8, W/8), no graph upstream
        with torch.enable_grad():
            a2 = a2.requires_grad_()
            a3 = net.stage2_to_3(a2)
            a4 = net.stage3_to_4(a3)
            logits = net.head_from_stage4(a4)
        return _graph_grad_cam(logits, (a2, a3, a4), classes, normalize, False, False, chunk, signed, columns)
    return _functional_grad_cam(net, images, classes, normalize, chunk, signed, columns)


def attribute_heatmaps_from_output(
    out: AttributeOutput,
    classes: Tensor | None = None,
    normalize: str = "max",
    retain_graph: bool = True,
    chunk: int | None = None,
) -> Heatmaps:
    """AAH from an existing forward pass (online dual-trace training, §3 skill 3).

    The first of the two backward passes the paper describes: the Grad-CAM
    gradients are taken w.r.t. ``out.stages`` only (graph path, see the module
    docstring), so no parameter ``.grad`` is touched, and the maps are returned
    detached. With ``retain_graph=True`` (default) the caller can then
    backpropagate the attribute loss computed from ``out.logits`` — the second
    backward pass::

        out = attr_net(images)
        aah = attribute_heatmaps_from_output(out, attrs)
        attribute_ce(out.logits, attrs).backward()

    Args:
        out: output of :meth:`AttributeNet.forward` computed with autograd on.
        classes, normalize, chunk: as in :func:`attribute_heatmaps`.
        retain_graph: keep the forward graph for a later backward pass.
    """
    _check_normalize(normalize)
    h, w = out.stages[0].shape[-2:]  # layer2, stride 8
    chunk = _check_chunk(chunk, len(out.logits), out.features.shape[0], 64 * h * w, out.features.device)
    if not all(a.requires_grad for a in out.stages):
        raise ValueError(
            "out.stages do not require grad: compute the AttributeNet forward pass with autograd "
            "enabled (not under torch.no_grad()) to take Grad-CAM gradients from it"
        )
    return _graph_grad_cam(out.logits, out.stages, classes, normalize, retain_graph, False, chunk)


def target_classes(logits: Sequence[Tensor], classes: Tensor | None = None) -> Tensor:
    """The class whose probability is ``y^k`` (eq. 1), per sample and attribute.

    Args:
        logits: K tensors (B, C_k).
        classes: optional (B, K) labels; ``IGNORE_INDEX`` entries and ``None``
            take the predicted (argmax) class.

    Returns:
        (B, K) int64 on the logits' device.

    Raises:
        ValueError: wrong shape or dtype, or a label outside ``[0, C_k)``.
    """
    predicted = torch.stack([z.detach().argmax(dim=1) for z in logits], dim=1)  # (B, K)
    if classes is None:
        return predicted
    if classes.shape != predicted.shape:
        raise ValueError(
            f"classes must have shape (B, K) = {tuple(predicted.shape)}, got {tuple(classes.shape)}"
        )
    if classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise ValueError(f"classes must be integer class indices, got dtype {classes.dtype}")
    classes = classes.to(device=predicted.device, dtype=torch.long)
    sizes = torch.tensor([z.shape[1] for z in logits], device=predicted.device)  # (K,)
    bad = (classes != IGNORE_INDEX) & ((classes < 0) | (classes >= sizes))
    if bool(bad.any()):
        b, k = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"target {int(classes[b, k])} of attribute {k} (sample {b}) is outside "
            f"[0, {int(sizes[k])}) and is not IGNORE_INDEX ({IGNORE_INDEX})"
        )
    return torch.where(classes == IGNORE_INDEX, predicted, classes)


def normalize_heatmaps(maps: Tensor, mode: str = "max") -> Tensor:
    """Normalise each (..., h, w) map independently; see the module docstring.

    ``"max"``: ``L / max(L)`` (all-zero maps stay zero); ``"minmax"``:
    ``(L - min) / (max - min + 1e-7)`` (pytorch_grad_cam's scale); ``"none"``:
    unchanged.
    """
    _check_normalize(mode)
    if mode == "none":
        return maps
    peak = maps.amax(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    if mode == "max":
        # L >= 0, so peak == 0 means the map is all zeros: 0 / tiny stays 0.
        return maps / peak.clamp_min(torch.finfo(maps.dtype).tiny)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return (maps - low) / (peak - low + MINMAX_EPS)


# ------------------------------------------------------------------ engines
def _functional_grad_cam(
    net: AttributeNet, images: Tensor, classes: Tensor | None, normalize: str, chunk: int, signed: bool = False,
    columns_of: Columns | None = None,
) -> Heatmaps:
    """torch.func path (eval-mode BatchNorm, no autocast): vjp stage by stage,
    backward vmapped over the K cotangents."""
    sizes = list(net.num_classes)
    device = images.device
    if chunk == 1:  # large inputs: the same maps, a third less backward (module docstring)
        net = fold_batchnorm(net, images[:1])
    # The outer level needs no autograd graph: gradients exist only inside the
    # function transforms, w.r.t. the stage outputs (parameters are constants).
    with torch.no_grad():
        a2 = net.forward_to_stage2(images)  # (B, C2, H/8, W/8)
        a3, vjp3 = vjp(net.stage2_to_3, a2)  # (B, C3, H/16, W/16)
        a4, vjp4 = vjp(net.stage3_to_4, a3)  # (B, C4, h4, w4)
        probs, vjp_head = vjp(lambda a: _concat_probs(net.head_from_stage4(a)), a4)  # (B, sum C_k)
        if columns_of is None:
            logits = list(probs.split(sizes, dim=1))  # argmax of probs == argmax of logits
            chosen = target_classes(logits, classes)  # (B, K)
            offsets = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0)  # (K,)
            columns = offsets + chosen  # (B, K): column of y^k in the concatenated probs
        else:
            columns = columns_of(probs)  # (B, J)

        def backward(cotangent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """One attribute's cotangent (B, sum C) -> its channel weights (B, C_s) per stage."""
            (g4,) = vjp_head(cotangent)  # eq. (1) at layer4
            (g3,) = vjp4(g4)  # ... at layer3
            (g2,) = vjp3(g3)  # ... at layer2
            # Reduce inside the vmap: only (K, B, C) weights leave it, never
            # the K-fold (K, B, C, h, w) gradients of all three stages at once.
            return _channel_weights(g2), _channel_weights(g3), _channel_weights(g4)

        parts: list[list[Tensor]] = []
        for start in range(0, columns.shape[1], chunk):
            stop = min(start + chunk, columns.shape[1])
            cotangents = _one_hots(columns[:, start:stop], probs.shape[1], probs.dtype)  # (k, B, sum C)
            if stop - start == 1:  # one attribute: a plain call, vmap's batching only costs (module docstring)
                weights = tuple(w[None] for w in backward(cotangents[0]))  # per stage (1, B, C)
            else:
                weights = vmap(backward)(cotangents)  # per stage (k, B, C)
            parts.append([_cam(a, w, signed) for a, w in zip((a2, a3, a4), weights)])
        return _finish(parts, normalize, device)


def _graph_grad_cam(
    logits: Sequence[Tensor],
    stages: Sequence[Tensor],
    classes: Tensor | None,
    normalize: str,
    retain_graph: bool,
    create_graph: bool,
    chunk: int,
    signed: bool = False,
    columns_of: Columns | None = None,
) -> Heatmaps:
    """Autograd-graph path: torch.autograd.grad(is_grads_batched=True) per chunk."""
    device = logits[0].device
    chosen = target_classes(logits, classes) if columns_of is None else None  # (B, K)
    with torch.autocast(device_type=device.type, enabled=False), torch.enable_grad():
        # y^k of eq. (1), in float32. Cotangent k is e_k for every sample;
        # summing over the batch is exact when y[b] depends on sample b only.
        probs = _concat_probs(logits)  # (B, sum C_k)
        offsets = torch.tensor([0, *[z.shape[1] for z in logits[:-1]]], device=device).cumsum(0)
        columns = offsets + chosen if columns_of is None else columns_of(probs.detach())  # (B, K) or (B, J)
        acts = [a if create_graph else a.detach() for a in stages]
        parts: list[list[Tensor]] = []
        num_attrs = columns.shape[1]
        for start in range(0, num_attrs, chunk):
            stop = min(start + chunk, num_attrs)
            cotangents = _one_hots(columns[:, start:stop], probs.shape[1], probs.dtype)
            grads = torch.autograd.grad(
                probs,
                list(stages),
                grad_outputs=cotangents,
                retain_graph=retain_graph or create_graph or stop < num_attrs,
                create_graph=create_graph,
                is_grads_batched=True,
            )  # per stage (k, B, C, h, w)
            parts.append([_cam(a, _channel_weights(g), signed) for a, g in zip(acts, grads)])
        return _finish(parts, normalize, device)


# ------------------------------------------------------------------ helpers
def _concat_probs(logits: Sequence[Tensor]) -> Tensor:
    """K x (B, C_k) logits -> (B, sum C_k) float32 softmax probabilities, head by head."""
    with torch.autocast(device_type=logits[0].device.type, enabled=False):
        return torch.cat([torch.softmax(z.float(), dim=1) for z in logits], dim=1)


def _one_hots(columns: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    """(B, k) column indices -> (k, B, width) cotangents, one 1 per (attribute, sample)."""
    out = torch.zeros(columns.shape[1], columns.shape[0], width, device=columns.device, dtype=dtype)
    return out.scatter_(2, columns.t().unsqueeze(2), 1.0)


def _channel_weights(grads: Tensor) -> Tensor:
    """Eq. (2)'s channel weights: spatial mean of dy^k/dA, (..., C, h, w) -> (..., C) float32."""
    return grads.float().mean(dim=(-2, -1))


def _cam(activation: Tensor, weights: Tensor, signed: bool = False) -> Tensor:
    """Eq. (2) for a chunk of attributes: A (B, C, h, w), w (k, B, C) -> (B, k, h, w)."""
    with torch.autocast(device_type=activation.device.type, enabled=False):
        cam = torch.einsum("kbc,bchw->bkhw", weights, activation.float())  # (B, k, h, w)
        return cam if signed else torch.relu(cam)


def _finish(parts: list[list[Tensor]], normalize: str, device: torch.device) -> Heatmaps:
    """Concatenate the chunks along K and normalise: 3 x (B, K, h, w)."""
    with torch.autocast(device_type=device.type, enabled=False):
        maps = [torch.cat(stage, dim=1) if len(stage) > 1 else stage[0] for stage in zip(*parts)]
        aah2, aah3, aah4 = (normalize_heatmaps(m, normalize) for m in maps)
    return aah2, aah3, aah4


def _has_training_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}; got {normalize!r}")


def default_chunk(batch: int, num_attrs: int, device: torch.device | str, pixels: int) -> int:
    """Attributes per vectorised backward when ``chunk=None``, for ``batch`` images of ``pixels`` (H x W) each:
    all ``num_attrs`` at once on accelerators (bigger batches keep them busy); on CPU about
    :data:`CPU_VECTOR_PIXELS` input pixels per backward, one attribute at a time on large inputs (module docstring)."""
    if torch.device(device).type != "cpu":
        return num_attrs
    return max(1, min(num_attrs, round(CPU_VECTOR_PIXELS / max(batch * pixels, 1))))


def _check_chunk(chunk: int | None, num_attrs: int, batch: int, pixels: int, device: torch.device) -> int:
    if chunk is None:
        return default_chunk(batch, num_attrs, device, pixels)
    if int(chunk) < 1:
        raise ValueError(f"chunk must be a positive number of attributes, got {chunk}")
    return int(chunk)

