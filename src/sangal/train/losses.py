"""Training losses (paper §4.1.2): ID cross-entropy, batch-hard triplet, attribute cross-entropy.

The paper trains the Re-ID network with an identity cross-entropy (softmax +
CE) and a triplet "distance loss", and the attribute network (and the
attribute heads of the ``id+attr``/``san-gal`` Re-ID modes) with one
cross-entropy per attribute. :func:`reid_losses` returns them as named terms
(``{"id", "triplet", "attr", "total"}``) so they are easy to log and ablate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from sangal.models.reid_net import ReIDOutput

__all__ = [
    "IGNORE_INDEX",
    "attribute_ce",
    "batch_hard_triplet",
    "cross_entropy_ls",
    "reid_losses",
    "LOSS_TERMS",
]

#: Unlabelled attribute value; equals ``sangal.data.attributes.IGNORE_INDEX``.
IGNORE_INDEX = -1

#: Names of the weighted terms :func:`reid_losses` knows.
LOSS_TERMS = ("id", "triplet", "attr")


def cross_entropy_ls(logits: Tensor, target: Tensor, epsilon: float = 0.1) -> Tensor:
    """Cross-entropy with optional label smoothing (Szegedy et al. 2016).

    ``loss = (1 - eps) * CE(logits, target) + eps * mean_c(-log p_c)``, i.e. the
    target distribution is ``(1 - eps) * onehot + eps / C``; the same as
    ``F.cross_entropy(..., label_smoothing=eps)``. ``epsilon=0`` is the paper's
    plain softmax + CE.

    Args:
        logits: (B, C).
        target: (B,) long in [0, C).
        epsilon: smoothing in [0, 1).
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy_ls expects logits (B, C) and target (B,), got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    log_probs = F.log_softmax(logits, dim=1)  # (B, C)
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)  # (B,)
    if epsilon == 0.0:
        return nll.mean()
    smooth = -log_probs.mean(dim=1)  # (B,)
    return ((1.0 - epsilon) * nll + epsilon * smooth).mean()


def pairwise_euclidean(features: Tensor) -> Tensor:
    """(N, D) -> (N, N) Euclidean distances (clamped before the sqrt for stable gradients)."""
    sq = features.pow(2).sum(dim=1)  # (N,)
    d2 = sq[:, None] + sq[None, :] - 2.0 * features @ features.t()  # (N, N)
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet(features: Tensor, pids: Tensor, margin: float | None = 0.3) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer and Leibe 2017), Euclidean distance.

    For every anchor: the farthest sample of the same identity (hardest
    positive, the anchor itself excluded) and the closest sample of another
    identity (hardest negative); loss ``max(0, d_ap - d_an + margin)``, or the
    soft margin ``softplus(d_ap - d_an)`` when ``margin is None``; mean over
    anchors. Anchors without a positive or a negative in the batch are skipped;
    a batch with no valid anchor gives 0 (connected to the graph).

    Args:
        features: (N, D) embeddings (the pre-BN-neck global features).
        pids: (N,) identity labels.
    """
    if features.dim() != 2 or pids.shape != features.shape[:1]:
        raise ValueError(
            f"batch_hard_triplet expects features (N, D) and pids (N,), got "
            f"{tuple(features.shape)} and {tuple(pids.shape)}"
        )
    dist = pairwise_euclidean(features)  # (N, N)
    same = pids[:, None] == pids[None, :]  # (N, N)
    eye = torch.eye(len(pids), dtype=torch.bool, device=features.device)
    positive = same & ~eye
    negative = ~same
    # Masked max/min without data-dependent indexing: distances are >= 0.
    hardest_pos = torch.where(positive, dist, torch.zeros_like(dist)).amax(dim=1)  # (N,)
    far = dist.detach().amax() + 1.0
    hardest_neg = torch.where(negative, dist, far.expand_as(dist)).amin(dim=1)  # (N,)
    valid = (positive.any(dim=1) & negative.any(dim=1)).to(dist.dtype)  # (N,)
    gap = hardest_pos - hardest_neg
    per_anchor = F.softplus(gap) if margin is None else F.relu(gap + margin)  # (N,)
    return (per_anchor * valid).sum() / valid.sum().clamp_min(1.0)


def attribute_ce(attr_logits: Sequence[Tensor], targets: Tensor) -> Tensor:
    """Mean over the K attribute heads of each head's cross-entropy.

    Samples whose target is ``IGNORE_INDEX`` are skipped; each head averages
    over its labelled samples, and a head with no labelled sample in the batch
    contributes 0 (never NaN) while still counting in the mean over heads.

    Args:
        attr_logits: K tensors (B, C_k).
        targets: (B, K) long, ``IGNORE_INDEX`` where unlabelled.
    """
    if targets.dim() != 2 or targets.shape[1] != len(attr_logits):
        raise ValueError(
            f"attribute_ce got {len(attr_logits)} heads but targets of shape {tuple(targets.shape)}"
        )
    if not attr_logits:
        raise ValueError("attribute_ce needs at least one attribute head")
    terms = []
    for k, logits in enumerate(attr_logits):
        target = targets[:, k]  # (B,)
        total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        count = (target != IGNORE_INDEX).sum().clamp_min(1)
        terms.append(total / count)
    return torch.stack(terms).mean()


def reid_losses(
    out: ReIDOutput,
    pids: Tensor,
    attrs: Tensor | None,
    weights: Mapping[str, float],
    *,
    epsilon: float = 0.1,
    margin: float | None = 0.3,
    triplet_features: Tensor | None = None,
    triplet_pids: Tensor | None = None,
) -> dict[str, Tensor]:
    """Named Re-ID training losses (§4.1.2) and their weighted sum ``"total"``: the one loss API of training.

    Terms (unweighted, as logged; ``total`` = sum of weight x term, a term of weight 0 is dropped):

    * ``"id"``: :func:`cross_entropy_ls` on ``out.logits`` (when present);
    * ``"triplet"``: :func:`batch_hard_triplet` on ``out.global_features`` (or ``triplet_features``);
    * ``"attr"``: :func:`attribute_ce` on ``out.attr_logits`` — only when the model
      has attribute heads and ``attrs`` is given.

    Args:
        out: the model's :class:`~sangal.models.reid_net.ReIDOutput`.
        pids: (B,) identity labels.
        attrs: (B, K) attribute labels with ``IGNORE_INDEX``, or None.
        weights: e.g. ``{"id": 1.0, "triplet": 1.0, "attr": 1.0}``; a missing key means weight 1.0.
        epsilon: label smoothing of the ID loss (0 = the paper's plain CE).
        margin: triplet margin (None = soft margin).
        triplet_features, triplet_pids: the batch the triplet mines over, (N, D) and (N,); under DDP the
            global batch gathered from every rank (default: this batch).
    """
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"unknown loss weights {unknown}; valid: {', '.join(LOSS_TERMS)}")
    terms: dict[str, Tensor] = {}
    if out.logits is not None and weights.get("id", 1.0) != 0:
        terms["id"] = cross_entropy_ls(out.logits, pids, epsilon)
    if weights.get("triplet", 1.0) != 0:
        features = out.global_features if triplet_features is None else triplet_features
        terms["triplet"] = batch_hard_triplet(features, pids if triplet_pids is None else triplet_pids, margin)
    if out.attr_logits is not None and attrs is not None and weights.get("attr", 1.0) != 0:
        terms["attr"] = attribute_ce(out.attr_logits, attrs)
    if not terms:
        raise ValueError("reid_losses: every loss term is disabled or unavailable")
    terms["total"] = sum(weights.get(name, 1.0) * value for name, value in terms.items())
    return terms
