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
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ASAM", "asam", "block_bounds", "block_index"]


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


def asam(x: Tensor, aah: Tensor, extra_sigmoid: bool = False, gain: float = 1.0) -> Tensor:
    """Apply ASAM (eqs. 3–4) to a Re-ID activation.

    Args:
        x: Re-ID activation, (B, C, h, w) with C even (C/2 < K: grouped attributes, module docstring).
        aah: attribute attention heat maps, (B, K, h', w'); resized bilinearly
            (align_corners=False) to (h, w) when the sizes differ.
        extra_sigmoid: apply one more sigmoid to alpha (literal reading of the
            sentence after eq. 4; see the module docstring). Default False.
        gain: alpha = sigmoid(gain * beta * AAH). 1 (default) is eq. 4, whose alpha
            lies in [0.5, 0.73]; a larger gain widens that range (ablation only).

    Returns:
        (B, C, h, w): ``cat([x1, x2 * alpha])``; the first half is ``x1`` itself.
    """
    if x.dim() != 4:
        raise ValueError(f"ASAM expects an activation (B, C, h, w), got shape {tuple(x.shape)}")
    if aah.dim() != 4:
        raise ValueError(f"ASAM expects heat maps (B, K, h, w), got shape {tuple(aah.shape)}")
    b, c, h, w = x.shape
    k = aah.shape[1]
    if aah.shape[0] != b:
        raise ValueError(f"ASAM batch mismatch: activation has {b} samples, heat maps {aah.shape[0]}")
    if c % 2:
        raise ValueError(f"ASAM needs an even number of channels to split in halves, got {c}")
    half = c // 2
    aah = aah.to(device=x.device, dtype=x.dtype)
    if aah.shape[-2:] != (h, w):
        aah = F.interpolate(aah, size=(h, w), mode="bilinear", align_corners=False)  # (B, K, h, w)

    x1, x2 = x[:, :half], x[:, half:]  # (B, C/2, h, w) each
    channel_mean = x1.mean(dim=(2, 3))  # (B, C/2)
    if half >= k:  # eq. 3: block k of C/2 channels per attribute
        pool = _block_pool_matrix(half, k).to(device=x.device, dtype=x.dtype)  # (C/2, K)
        beta = torch.sigmoid(channel_mean @ pool)  # (B, K) channel-block + global average pooling
    else:  # narrow stage: channel c holds a group of attributes (module docstring)
        holder = block_index(k, half, x.device)  # (K,) channel holding each attribute
        beta = torch.sigmoid(channel_mean.index_select(1, holder))  # (B, K)

    # Eq. 4: alpha_k = sigmoid(beta_k * AAH_k).
    alpha = torch.sigmoid((gain * beta)[:, :, None, None] * aah)  # (B, K, h, w)
    if extra_sigmoid:
        alpha = torch.sigmoid(alpha)

    if half >= k:
        index = block_index(half, k, x.device)  # (C/2,) block of each channel, same rule as for x1
        attended = x2 * alpha.index_select(1, index)  # (B, C/2, h, w): block k of x2 times alpha_k
    else:
        group_mean = _block_pool_matrix(k, half).to(device=x.device, dtype=x.dtype)  # (K, C/2)
        attended = x2 * torch.einsum("bkhw,kc->bchw", alpha, group_mean)  # channel c times its group's mean alpha
    return torch.cat([x1, attended], dim=1)  # (B, C, h, w)


class ASAM(nn.Module):
    """Parameter-free Attribute Spatial Attention Module (eqs. 3–4); see :func:`asam`.

    Has no parameters and no buffers; ``num_attrs`` is checked against the heat maps.
    """

    def __init__(self, num_attrs: int, extra_sigmoid: bool = False, gain: float = 1.0) -> None:
        super().__init__()
        if num_attrs < 1:
            raise ValueError(f"ASAM needs at least one attribute, got num_attrs={num_attrs}")
        self.num_attrs = num_attrs
        self.extra_sigmoid = extra_sigmoid
        self.gain = float(gain)

    def forward(self, x: Tensor, aah: Tensor) -> Tensor:
        """(B, C, h, w), (B, K, h', w') -> (B, C, h, w)."""
        if aah.dim() == 4 and aah.shape[1] != self.num_attrs:
            raise ValueError(
                f"ASAM built for {self.num_attrs} attributes got {aah.shape[1]} heat maps"
            )
        return asam(x, aah, extra_sigmoid=self.extra_sigmoid, gain=self.gain)

    def extra_repr(self) -> str:
        return f"num_attrs={self.num_attrs}, extra_sigmoid={self.extra_sigmoid}, gain={self.gain}"
