"""Attribute Spatial Attention Module (ASAM), paper §3.3, eqs. 3–4, Figure 3.

ASAM injects the attribute attention heat maps (AAH, eq. 2) of the attribute
network into a Re-ID activation ``x`` of shape (B, C, h, w) without adding any
parameter and without changing the activation's shape:

1. Split the channels into halves ``x1 = x[:, :C/2]`` and ``x2 = x[:, C/2:]``.
   ``x1`` passes through unchanged ("to maintain a certain amount of global
   information").
2. Channel attention from ``x1`` (eq. 3): split ``x1``'s C1 = C/2 channels into
   K contiguous blocks (one per attribute), average each block over its
   channels and all positions (channel-block average pooling + global average
   pooling) and apply a sigmoid: ``beta`` (B, K).
3. Spatial attention (eq. 4): ``alpha_k = sigmoid(beta_k * AAH_k)``, (B, K, h, w).
4. Block k of ``x2`` (same block rule on its C2 = C/2 channels) is multiplied
   by ``alpha_k``; the output is ``cat([x1, x2 * alpha])``.

Block rule: with C channels and K blocks, block k holds channels
``[floor(k*C/K), floor((k+1)*C/K))`` — K contiguous blocks whose sizes differ
by at most one (C >= K is required so none is empty). The paper writes the
block size as c_activ/c_attr and assumes it divides evenly (it does not for
Market's K = 27 attributes and C1 = 256/512/1024).

Stages narrower than 2K (this toolkit's reading; the paper's ResNet-50 never has
them): when C/2 < K, e.g. MobileNetV2's stride-8 stage (C = 32, C/2 = 16) with
Market's K = 27, a block cannot hold a channel, so the rule is turned around:
channel c of each half holds a *group* of attributes,
``[floor(c*K/(C/2)), floor((c+1)*K/(C/2)))`` (floor or ceil of K/(C/2) attributes
each, never none). ``beta_k`` is the sigmoid of the mean of the x1 channel that
holds attribute k (eq. 3 with a one-channel block, shared by the group);
``alpha_k`` is eq. 4 as before; channel c of x2 is multiplied by the mean of
``alpha_k`` over its group. With C/2 = K both rules are the same; with
C/2 >= K the module computes exactly what it always did.

Reading of eq. 3: its printed form ``(1/hw) * sum_k sum_ij x`` sums over the
block's channels; the text calls it "channel block average pooling", so we
average over the block's channels as well (a sum would scale beta's logit by
the block size, ~10–40x, and saturate the sigmoid at 1).

The "extra" sigmoid: after eq. 4 the text says "after the spatial attention
parameter passes through the Sigmoid function again, [it] is dotted with the
last half channel features". We read this sentence as describing eq. 4's own
sigmoid — the "again" refers to beta's sigmoid in eq. 3 — so by default
(``extra_sigmoid=False``) alpha is eq. 4 exactly. Applying a third sigmoid
would map eq. 4's range (with beta in (0, 1) and max-normalised AAH in [0, 1],
alpha lies in [0.5, 0.73]) to [0.62, 0.68]: the contrast between attended and
unattended positions would fall from ~1.46x to ~1.08x, practically flattening
the attention the module exists to provide. The literal reading is available
as ``extra_sigmoid=True`` for ablation.

Forms (``form``, config ``model.asam_form``; issue 21). Eqs. 3–4 give alpha as above in
every form and ``x1`` always passes unchanged; the forms differ only in the multiplier
M (B, C/2, h, w) of ``x2`` (output ``cat([x1, x2 * M])``). ``mean(.)`` is the spatial
mean per sample and per attribute map over the activation's h x w (after the resize):

* ``paper``   M = alpha (eqs. 3–4 exactly; alpha in [0.5, 0.73] damps x2 to ~0.55x on average).
* ``mean1``   M = alpha / mean(alpha): the same contrast, mean gain 1.
* ``residual`` M = (1 + alpha) / (1 + mean(alpha)): residual attention rescaled to mean gain 1
  (contrast ~1.15x instead of ~1.46x).
* ``gated``   M = 1 + g * (alpha / mean(alpha) - 1), one learned scalar g per stage, zero at
  initialisation: the identity until training chooses how much guidance to take.
* ``mixed``   M = 1 + W (alpha / mean(alpha) - 1), W a learned K -> C/2 1x1 convolution
  without bias per stage, zero at initialisation: channel c follows any mix of the K maps
  instead of block k following map k.

Per-attribute maps (alpha, alpha/mean, ...) reach x2's channels by the block rule above; on a
stage narrower than 2K channel c takes the mean of its group's maps. That rule is linear and
maps a constant 1 to 1, so ``mean1`` and ``residual`` keep mean gain 1 per channel there too,
and ``gated`` is ``1 + g * (group mean of alpha/mean(alpha) - 1)``. ``mixed`` has no block or
group rule at all: W connects every map to every channel, narrow stage or not (MobileNetV2's
layer2: a 16 x 27 W). ``gain`` and ``extra_sigmoid`` shape alpha before the form divides by its
mean: with ``gain=0`` alpha is a constant 0.5, so every form but ``paper`` is the identity;
``extra_sigmoid`` flattens alpha's contrast to ~1.08x, which ``gated``/``mixed`` can scale back.

At initialisation ``gated`` and ``mixed`` are the identity to the bit: their deviation term
is 0 * finite = 0, 1 + 0 = 1 and x2 * 1 = x2 in every floating-point format, so a SAN-GAL net
built with them computes the ``id`` net's features exactly. Dtypes: alpha is computed in the
activation's dtype (bf16 under bf16 autocast), as ``paper`` always did; the new forms take
the spatial mean and the ratio in float32 (or wider) and cast the result (``mean1``, ``residual``) or
the deviation from 1 (``gated``, ``mixed``: small numbers keep their precision in bf16) back
to the activation's dtype; g and W (float32 parameters) are cast to it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sangal import choices

__all__ = ["ASAM", "FORMS", "asam", "block_bounds", "block_index"]

#: Valid ``form`` values (module docstring); ``paper`` is eqs. 3–4.
FORMS = choices.ASAM_FORMS


def block_bounds(channels: int, k: int) -> list[tuple[int, int]]:
    """Channel ranges ``[start, end)`` of the K contiguous blocks of ``channels`` channels.

    Block i covers ``[floor(i*channels/k), floor((i+1)*channels/k))``; sizes differ
    by at most one and every block is non-empty.

    Raises:
        ValueError: ``k < 1`` or ``channels < k``.
    """
    if k < 1:
        raise ValueError(f"number of attribute blocks must be >= 1, got {k}")
    if channels < k:
        raise ValueError(
            f"ASAM needs at least one channel per attribute: {channels} channels "
            f"cannot be split into {k} blocks"
        )
    return [(i * channels // k, (i + 1) * channels // k) for i in range(k)]


@lru_cache(maxsize=64)
def _block_index_cpu(channels: int, k: int) -> Tensor:
    sizes = torch.tensor([end - start for start, end in block_bounds(channels, k)])
    return torch.repeat_interleave(torch.arange(k), sizes)  # (channels,)


@lru_cache(maxsize=64)
def _block_pool_matrix(channels: int, k: int) -> Tensor:
    """(channels, K) matrix averaging each block: entry (c, i) = 1/|block i| if c is in block i."""
    index = _block_index_cpu(channels, k)
    onehot = F.one_hot(index, k).to(torch.float64)  # (channels, K)
    return onehot / onehot.sum(dim=0)  # float64; cast to the activation dtype by the caller


def block_index(channels: int, k: int, device: torch.device | str | None = None) -> Tensor:
    """Block number of every channel, (channels,) long, following :func:`block_bounds`."""
    return _block_index_cpu(channels, k).to(device)


def asam(x: Tensor, aah: Tensor, extra_sigmoid: bool = False, gain: float = 1.0, form: str = "paper",
         weight: Tensor | None = None) -> Tensor:
    """Apply ASAM (eqs. 3–4) in one of :data:`FORMS` to a Re-ID activation.

    Args:
        x: Re-ID activation, (B, C, h, w) with C even (C/2 < K: grouped attributes, module docstring).
        aah: attribute attention heat maps, (B, K, h', w'); resized bilinearly
            (align_corners=False) to (h, w) when the sizes differ.
        extra_sigmoid: apply one more sigmoid to alpha (literal reading of the
            sentence after eq. 4; see the module docstring). Default False.
        gain: alpha = sigmoid(gain * beta * AAH). 1 (default) is eq. 4, whose alpha
            lies in [0.5, 0.73]; a larger gain widens that range (ablation only).
        form: how alpha multiplies x2 (module docstring); ``paper`` is eq. 4's product.
        weight: ``gated``: the gate g, a 0-dim tensor; ``mixed``: W, (C/2, K, 1, 1); else None.

    Returns:
        (B, C, h, w): ``cat([x1, x2 * M])``; the first half is ``x1`` itself.
    """
    if x.dim() != 4:
        raise ValueError(f"ASAM expects an activation (B, C, h, w), got shape {tuple(x.shape)}")
    if aah.dim() != 4:
        raise ValueError(f"ASAM expects heat maps (B, K, h, w), got shape {tuple(aah.shape)}")
    b, c, h, w = x.shape
    if aah.shape[0] != b:
        raise ValueError(f"ASAM batch mismatch: activation has {b} samples, heat maps {aah.shape[0]}")
    if c % 2:
        raise ValueError(f"ASAM needs an even number of channels to split in halves, got {c}")
    if form not in FORMS:
        raise ValueError(f"unknown ASAM form {form!r}; valid: {', '.join(FORMS)}")
    if (weight is not None) != (form in ("gated", "mixed")):
        raise ValueError(f"ASAM form {form!r} {'needs a' if weight is None else 'takes no'} learned weight")
    half = c // 2
    aah = aah.to(device=x.device, dtype=x.dtype)
    if aah.shape[-2:] != (h, w):
        aah = F.interpolate(aah, size=(h, w), mode="bilinear", align_corners=False)  # (B, K, h, w)

    x1, x2 = x[:, :half], x[:, half:]  # (B, C/2, h, w) each
    alpha = _alpha(x1, aah, extra_sigmoid, gain)  # (B, K, h, w)
    return torch.cat([x1, x2 * _multiplier(alpha, form, weight, half)], dim=1)  # (B, C, h, w)


def _alpha(x1: Tensor, aah: Tensor, extra_sigmoid: bool, gain: float) -> Tensor:
    """Eqs. 3–4: (B, C/2, h, w) first half and (B, K, h, w) maps -> alpha (B, K, h, w)."""
    half, k = x1.shape[1], aah.shape[1]
    channel_mean = x1.mean(dim=(2, 3))  # (B, C/2)
    if half >= k:  # eq. 3: block k of C/2 channels per attribute
        pool = _block_pool_matrix(half, k).to(device=x1.device, dtype=x1.dtype)  # (C/2, K)
        beta = torch.sigmoid(channel_mean @ pool)  # (B, K) channel-block + global average pooling
    else:  # narrow stage: channel c holds a group of attributes (module docstring)
        holder = block_index(k, half, x1.device)  # (K,) channel holding each attribute
        beta = torch.sigmoid(channel_mean.index_select(1, holder))  # (B, K)

    # Eq. 4: alpha_k = sigmoid(beta_k * AAH_k).
    alpha = torch.sigmoid((gain * beta)[:, :, None, None] * aah)  # (B, K, h, w)
    return torch.sigmoid(alpha) if extra_sigmoid else alpha


def _to_channels(maps: Tensor, half: int) -> Tensor:
    """Per-attribute maps (B, K, h, w) -> per-channel maps (B, C/2, h, w): block k of x2 takes map k;
    on a narrow stage (C/2 < K) channel c takes the mean of its group's maps."""
    k = maps.shape[1]
    if half >= k:
        return maps.index_select(1, block_index(half, k, maps.device))  # block k of x2 -> map k
    group_mean = _block_pool_matrix(k, half).to(device=maps.device, dtype=maps.dtype)  # (K, C/2)
    return torch.einsum("bkhw,kc->bchw", maps, group_mean)  # channel c: mean of its group's maps


def _multiplier(alpha: Tensor, form: str, weight: Tensor | None, half: int) -> Tensor:
    """The factor M (B, C/2, h, w) of x2 in ``form`` (module docstring), in alpha's dtype."""
    if form == "paper":
        return _to_channels(alpha, half)
    a32 = alpha.to(torch.promote_types(alpha.dtype, torch.float32))  # bf16/fp16 -> float32, else as is
    mean = a32.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1) spatial mean per sample and map
    if form == "residual":
        return _to_channels(((1.0 + a32) / (1.0 + mean)).to(alpha.dtype), half)
    ratio = a32 / mean.clamp_min(torch.finfo(a32.dtype).tiny)  # (B, K, h, w), spatial mean 1
    if form == "mean1":
        return _to_channels(ratio.to(alpha.dtype), half)
    deviation = (ratio - 1.0).to(alpha.dtype)  # (B, K, h, w), spatial mean 0
    assert weight is not None
    if form == "gated":
        return 1.0 + weight.to(alpha.dtype) * _to_channels(deviation, half)  # g = 0: exactly 1
    return 1.0 + F.conv2d(deviation, weight.to(alpha.dtype))  # mixed: W (C/2, K, 1, 1); W = 0: exactly 1


class ASAM(nn.Module):
    """Attribute Spatial Attention Module (eqs. 3–4) in one of :data:`FORMS`; see :func:`asam`.

    ``paper``, ``mean1`` and ``residual`` have no parameters and no buffers. ``gated`` holds one
    scalar gate per stage (``gate.<stage>``), ``mixed`` one (C/2, K, 1, 1) mixing per stage
    (``mix.<stage>``), all zero at initialisation (created without drawing random numbers).

    Args:
        num_attrs: K, checked against the heat maps.
        stage_channels: ``gated``/``mixed``: channels C of each attended stage, e.g. ``{"layer2": 512}``.
    """

    def __init__(self, num_attrs: int, extra_sigmoid: bool = False, gain: float = 1.0, form: str = "paper",
                 stage_channels: Mapping[str, int] | None = None) -> None:
        super().__init__()
        if num_attrs < 1:
            raise ValueError(f"ASAM needs at least one attribute, got num_attrs={num_attrs}")
        if form not in FORMS:
            raise ValueError(f"unknown ASAM form {form!r}; valid: {', '.join(FORMS)}")
        self.num_attrs = num_attrs
        self.extra_sigmoid = extra_sigmoid
        self.gain = float(gain)
        self.form = form
        self.gate = nn.ParameterDict()  # gated: stage -> g, shape ()
        self.mix = nn.ParameterDict()  # mixed: stage -> W, (C/2, K, 1, 1)
        if form in ("gated", "mixed"):
            if not stage_channels:
                raise ValueError(f"ASAM form {form!r} needs the channels of each stage it attends")
            for stage, channels in stage_channels.items():
                if channels % 2:
                    raise ValueError(f"ASAM needs an even number of channels at {stage}, got {channels}")
                if form == "gated":
                    self.gate[stage] = nn.Parameter(torch.zeros(()))
                else:
                    self.mix[stage] = nn.Parameter(torch.zeros(channels // 2, num_attrs, 1, 1))

    def forward(self, x: Tensor, aah: Tensor, stage: str | None = None) -> Tensor:
        """(B, C, h, w), (B, K, h', w') -> (B, C, h, w); ``stage`` names the learned weight to use."""
        if aah.dim() == 4 and aah.shape[1] != self.num_attrs:
            raise ValueError(
                f"ASAM built for {self.num_attrs} attributes got {aah.shape[1]} heat maps"
            )
        weights = self.gate if self.form == "gated" else self.mix
        weight = None
        if self.form in ("gated", "mixed"):
            if stage not in weights:
                raise ValueError(f"ASAM form {self.form!r} has weights for {sorted(weights)}, not {stage!r}")
            weight = weights[stage]
        return asam(x, aah, extra_sigmoid=self.extra_sigmoid, gain=self.gain, form=self.form, weight=weight)

    def learned(self) -> dict[str, float]:
        """What training has learned, for the run log: each stage's gate g (``gated``) or mean |W| (``mixed``)."""
        gates = {f"asam_gate_{s}": float(g.detach()) for s, g in self.gate.items()}
        return gates | {f"asam_mix_{s}": float(w.detach().abs().mean()) for s, w in self.mix.items()}

    def extra_repr(self) -> str:
        return (f"num_attrs={self.num_attrs}, extra_sigmoid={self.extra_sigmoid}, gain={self.gain}, "
                f"form={self.form!r}")
