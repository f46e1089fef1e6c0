"""Training losses (paper §4.1.2): ID cross-entropy, batch-hard triplet, attribute cross-entropy.

The attribute cross-entropy can weigh each class by its rarity in the training labels
(``attr_train.loss=balanced``, the DeepMAR scheme: :func:`balanced_class_weights`).

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

from sangal import choices
from sangal.config import LossConfig

if TYPE_CHECKING:
    from sangal.models.reid_net import ReIDOutput

__all__ = [
    "ATTR_LOSSES",
    "IGNORE_INDEX",
    "attribute_ce",
    "attribute_class_weights",
    "balanced_class_weights",
    "class_ratios",
    "batch_hard_triplet",
    "cross_entropy_ls",
    "reid_losses",
    "attention_guidance",
    "LOSS_TERMS",
]

#: Unlabelled attribute value; equals ``sangal.data.attributes.IGNORE_INDEX``.
IGNORE_INDEX = -1

#: Names of the weighted terms :func:`reid_losses` knows.
LOSS_TERMS = ("id", "triplet", "attr", "guide")

#: ``attr_train.loss`` values: ``ce`` (the paper's plain cross-entropy) | ``balanced`` (DeepMAR weights).
ATTR_LOSSES = choices.ATTR_LOSSES


def cross_entropy_ls(logits: Tensor, target: Tensor, epsilon: float) -> Tensor:
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


def attribute_ce(attr_logits: Sequence[Tensor], targets: Tensor,
                 class_weights: Sequence[Tensor] | None = None) -> Tensor:
    """Mean over the K attribute heads of each head's cross-entropy.

    Samples whose target is ``IGNORE_INDEX`` are skipped; each head averages
    over its labelled samples, and a head with no labelled sample in the batch
    contributes 0 (never NaN) while still counting in the mean over heads.
    With ``class_weights`` each head takes the weighted mean ``sum w_y CE / sum w_y``
    over its labelled samples (``F.cross_entropy``'s weighted mean), so equal
    weights give the plain loss and the loss keeps the plain one's scale.

    Args:
        attr_logits: K tensors (B, C_k).
        targets: (B, K) long, ``IGNORE_INDEX`` where unlabelled.
        class_weights: K tensors (C_k,) (:func:`balanced_class_weights`), or None: plain CE.
    """
    if targets.dim() != 2 or targets.shape[1] != len(attr_logits):
        raise ValueError(
            f"attribute_ce got {len(attr_logits)} heads but targets of shape {tuple(targets.shape)}"
        )
    if not attr_logits:
        raise ValueError("attribute_ce needs at least one attribute head")
    if class_weights is not None and len(class_weights) != len(attr_logits):
        raise ValueError(f"attribute_ce got {len(attr_logits)} heads but {len(class_weights)} class weight vectors")
    terms = []
    for k, logits in enumerate(attr_logits):
        target = targets[:, k]  # (B,)
        labelled = target != IGNORE_INDEX  # (B,)
        if class_weights is None:
            total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
            terms.append(total / labelled.sum().clamp_min(1))
            continue
        weight = class_weights[k].to(device=logits.device, dtype=torch.float32)  # (C_k,)
        total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
        mass = (weight[target.clamp_min(0)] * labelled).sum()  # sum of the labelled samples' weights
        terms.append(total / mass.clamp_min(torch.finfo(torch.float32).tiny))  # no labelled sample: 0 / tiny = 0
    return torch.stack(terms).mean()


def class_ratios(targets: Tensor | Sequence, num_classes: Sequence[int]) -> list[Tensor]:
    """Each attribute's class ratios among its labelled entries: K tensors (C_k,) float64 summing to 1.

    ``targets`` (N, K) with ``IGNORE_INDEX`` where unlabelled (skipped); an attribute labelled
    nowhere gets uniform ratios.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)  # (N, K)
    if targets.dim() != 2 or targets.shape[1] != len(num_classes):
        raise ValueError(f"class_ratios: targets of shape {tuple(targets.shape)} for {len(num_classes)} attributes")
    ratios = []
    for k, c in enumerate(num_classes):
        column = targets[:, k]
        counts = torch.bincount(column[column != IGNORE_INDEX], minlength=c).to(torch.float64)  # (C_k,)
        if counts.numel() > c:
            raise ValueError(f"class_ratios: attribute {k} has label {counts.numel() - 1} but {c} classes")
        ratios.append(counts / counts.sum() if counts.sum() > 0 else torch.full((c,), 1.0 / c, dtype=torch.float64))
    return ratios


def balanced_class_weights(ratios: Sequence[Tensor]) -> list[Tensor]:
    """DeepMAR class weights (Li et al. 2015, sigma = 1): class c of an attribute weighs ``exp(1 - r_c)``.

    For a binary attribute with positive ratio p this is DeepMAR's exactly: positives weigh
    ``exp(1 - p)``, negatives ``exp(p)``; the C_k-class form gives every class ``exp(1 - r_c)``,
    r_c its ratio among the labelled training images (:func:`class_ratios`). A balanced
    attribute gets equal weights, which :func:`attribute_ce` turns into the plain loss.
    """
    return [torch.exp(1.0 - torch.as_tensor(r, dtype=torch.float64)).to(torch.float32) for r in ratios]


def attribute_class_weights(loss: str, targets: Tensor | Sequence,
                            num_classes: Sequence[int]) -> tuple[list[Tensor] | None, dict]:
    """The class weights ``attr_train.loss`` asks for (None: plain CE) and what to record of them.

    Returns ``(weights, record)``: record holds the loss, the training labels' class ratios and the
    weights (None for ``ce``), as lists, for the attribute checkpoint's state.
    """
    if loss not in ATTR_LOSSES:
        raise ValueError(f"unknown attribute loss {loss!r}; valid: {', '.join(ATTR_LOSSES)}")
    ratios = class_ratios(targets, num_classes)
    weights = balanced_class_weights(ratios) if loss == "balanced" else None
    record = {"loss": loss, "class_ratios": [r.tolist() for r in ratios],
              "class_weights": [w.tolist() for w in weights] if weights is not None else None}
    return weights, record


def attention_guidance(attention: Sequence[Tensor], maps: Sequence[Tensor]) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017) toward the attribute heat maps, unweighted.

    Per stage j: the target is the mean over the K attribute maps, resized to the stage's (h, w); both it and the
    net's attention are flattened and L2-normalised per image, and the term is mean_b ||a_b - t_b||^2 / (2 h w)
    (the paper's code: beta / 2 times the mean squared difference; ``loss.guide`` is beta, 1000 there). Summed over
    stages.

    Args:
        attention: the net's (B, h, w) maps per stage (:func:`sangal.models.reid_net.stage_attention`).
        maps: the training heat maps per stage, (B, K, h', w').
    """
    total = attention[0].new_zeros(())
    for a, m in zip(attention, maps, strict=True):
        h, w = a.shape[-2:]
        target = m.float().mean(dim=1, keepdim=True)  # (B, 1, h', w')
        if target.shape[-2:] != (h, w):
            target = F.interpolate(target, size=(h, w), mode="bilinear", align_corners=False)
        a_hat = F.normalize(a.flatten(1), dim=1)  # (B, h*w)
        t_hat = F.normalize(target.flatten(1), dim=1)
        total = total + (a_hat - t_hat).pow(2).sum(dim=1).mean() / (2 * h * w)
    return total


def reid_losses(
    out: ReIDOutput,
    pids: Tensor,
    attrs: Tensor | None,
    weights: Mapping[str, float],
    *,
    epsilon: float = LossConfig.label_smoothing,
    margin: float | None = LossConfig.margin,
    triplet_features: Tensor | None = None,
    triplet_pids: Tensor | None = None,
    guide_maps: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Named Re-ID training losses (§4.1.2) and their weighted sum ``"total"``: the one loss API of training.

    Terms (unweighted, as logged; ``total`` = sum of weight x term, a term of weight 0 is dropped):

    * ``"id"``: :func:`cross_entropy_ls` on ``out.logits`` (when present);
    * ``"triplet"``: :func:`batch_hard_triplet` on ``out.global_features`` (or ``triplet_features``);
    * ``"attr"``: :func:`attribute_ce` on ``out.attr_logits`` — only when the model
      has attribute heads and ``attrs`` is given;
    * ``"guide"``: :func:`attention_guidance` of ``out.attention`` toward ``guide_maps`` — only when both are given.

    Args:
        out: the model's :class:`~sangal.models.reid_net.ReIDOutput`.
        pids: (B,) identity labels.
        attrs: (B, K) attribute labels with ``IGNORE_INDEX``, or None.
        weights: e.g. ``{"id": 1.0, "triplet": 1.0, "attr": 1.0}``; a missing key means weight 1.0.
        epsilon: label smoothing of the ID loss (0 = the paper's plain CE).
        margin: triplet margin (None = soft margin).
        triplet_features, triplet_pids: the batch the triplet mines over, (N, D) and (N,); under DDP the
            global batch gathered from every rank (default: this batch).
        guide_maps: the batch's training heat maps (3 x (B, K, h, w)) for the ``"guide"`` term.
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
    if out.attention is not None and guide_maps is not None and weights.get("guide", 1.0) != 0:
        terms["guide"] = attention_guidance(out.attention, guide_maps)
    if not terms:
        raise ValueError("reid_losses: every loss term is disabled or unavailable")
    terms["total"] = sum(weights.get(name, 1.0) * value for name, value in terms.items())
    return terms
