"""Re-ID network of SAN-GAL and its ablations (paper §3.1, §3.3, Table 1).

Modes (the rows of Table 1):

* ``"id"`` — IDonly baseline: backbone -> global average pooling -> BN neck
  (BNNeck, Luo et al. 2019: BatchNorm1d with a frozen zero bias) -> bias-free
  linear ID classifier.
* ``"id+attr"`` — the baseline plus one BN-FC head per attribute on the pooled
  global feature (multi-task learning, no attention).
* ``"san-gal"`` — ``id+attr`` plus ASAM (eqs. 3–4; parameter-free in its paper form) after
  layer2, layer3 and layer4, "all three residual blocks with feature map scale
  changes" (§3, special skill 2), each fed the attribute attention heat maps
  (AAH, eq. 2) computed at the same stage of the attribute network. For a
  non-ResNet backbone these are its stride-8/16/32 stages (models/backbone.py).
  ``asam_form`` picks how the attention multiplies the features (:data:`~sangal.models.asam.FORMS`);
  the learned forms' gates are created after every other layer and without drawing random
  numbers, so the backbone, BN neck and ID classifier of one seed are the same in every mode.

Every mode returns the same :class:`ReIDOutput`, in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sangal import choices
from sangal.errors import ConfigError
from sangal.models.arch_keys import arch_of
from sangal.models.asam import ASAM, FORMS
from sangal.models.backbone import build_backbone

__all__ = ["MODES", "ReIDNet", "ReIDOutput", "stage_attention"]

#: Valid ``mode`` values: Table 1's IDonly, ID+attr and SAN-GAL.
MODES = choices.REID_MODES


@dataclass
class ReIDOutput:
    """What :meth:`ReIDNet.forward` returns, whatever the mode.

    Attributes:
        features: (B, D) BN-neck output, the retrieval embedding.
        global_features: (B, D) pooled feature before the BN neck (triplet loss).
        logits: (B, num_ids) identity logits.
        attr_logits: K tensors (B, C_k), or None in mode ``"id"``.
        attention: the net's own spatial attention after layer2, layer3 and layer4 (before ASAM), each
            (B, h, w) (:func:`stage_attention`); only when ``forward(..., attention=True)``, else None.
    """

    features: Tensor
    global_features: Tensor
    logits: Tensor | None
    attr_logits: list[Tensor] | None
    attention: tuple[Tensor, ...] | None = None


def map_pool(activation: Tensor, maps: Tensor) -> Tensor:
    """Attribute-guided pooling: the activation's average weighted by the mean over K of the heat maps,
    (B, D, h, w) and (B, K, h', w') -> (B, D); a map resized to (h, w) first; an all-zero map pools nothing."""
    weight = maps.to(activation.dtype).mean(dim=1, keepdim=True)  # (B, 1, h', w')
    if weight.shape[-2:] != activation.shape[-2:]:
        weight = F.interpolate(weight, size=activation.shape[-2:], mode="bilinear", align_corners=False)
    return (activation * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1e-6)


def stage_attention(activation: Tensor) -> Tensor:
    """Activation-based spatial attention (Zagoruyko & Komodakis 2017): the channel mean of the squared
    activation, (B, C, h, w) -> (B, h, w) float32; what the attention-guidance loss pulls toward the heat maps."""
    return activation.float().pow(2).mean(dim=1)


class ReIDNet(nn.Module):
    """Re-ID network in one of :data:`MODES`.

    Args:
        num_ids: number of training identities (ID classifier outputs).
        attr_classes: classes per attribute head (length K); required by
            ``"id+attr"`` and ``"san-gal"``; recorded but unused by ``"id"``.
        mode: one of :data:`MODES`.
        backbone: a name of :data:`~sangal.models.backbone.BACKBONES` (resnet50, mobilenet_v2, ...).
        pretrained: ImageNet weights (True), a local weights file, or False.
        last_stride: stride of layer4 (1 or 2).
        extra_sigmoid: ASAM option (see :mod:`sangal.models.asam`).
        asam_stages: stages followed by ASAM (paper: 2, 3, 4); the others get no attention.
        asam_gain: ASAM option (see :func:`~sangal.models.asam.asam`).
        asam_form: one of :data:`~sangal.models.asam.FORMS` (``paper``: eqs. 3–4).
        attr_pool: ``san-gal`` only: beside the global average, pool layer4 under the mean of the layer4 heat
            maps (attribute-guided pooling); the embedding is both, (B, 2D).
    """

    def __init__(
        self,
        num_ids: int,
        attr_classes: Sequence[int] | None,
        mode: str = "san-gal",
        backbone: str = "resnet50",
        pretrained: bool | str | Path = True,
        last_stride: int = 1,
        extra_sigmoid: bool = False,
        asam_stages: Sequence[int] = (2, 3, 4),
        asam_gain: float = 1.0,
        asam_form: str = "paper",
        attr_pool: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"unknown Re-ID mode {mode!r}; valid: {', '.join(MODES)}")
        if num_ids < 1:
            raise ConfigError(f"num_ids must be >= 1, got {num_ids}")
        if attr_classes is not None:
            attr_classes = [int(c) for c in attr_classes] or None  # [] (as in arch) == None
        if attr_classes is not None:
            if min(attr_classes) < 2:
                raise ConfigError(
                    f"attr_classes must list >= 2 classes per attribute, got {attr_classes}"
                )
        if mode != "id" and attr_classes is None:
            raise ConfigError(f"mode {mode!r} needs attr_classes (the attribute schema)")
        self.mode = mode
        self.num_ids = num_ids
        self.attr_classes = attr_classes
        self.backbone_name = backbone
        self.last_stride = last_stride
        self.extra_sigmoid = extra_sigmoid
        self.asam_stages = tuple(sorted(int(s) for s in asam_stages))
        if not self.asam_stages or any(s not in (2, 3, 4) for s in self.asam_stages):
            raise ConfigError(f"asam_stages must be among 2, 3, 4, got {list(asam_stages)}")
        self.asam_gain = float(asam_gain)
        if asam_form not in FORMS:
            raise ConfigError(f"unknown ASAM form {asam_form!r}; valid: {', '.join(FORMS)}")
        self.asam_form = asam_form
        if attr_pool and mode != "san-gal":
            raise ConfigError(f"attr_pool pools under the heat maps, which mode {mode!r} does not take")
        self.attr_pool = bool(attr_pool)

        self.backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
        dim = self.backbone.channels[3]
        self.feature_dim = 2 * dim if self.attr_pool else dim  # the embedding: [global; attribute-pooled]
        # BNNeck: the bias is frozen at zero so the BN output stays centred for retrieval.
        self.bottleneck = nn.BatchNorm1d(self.feature_dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.feature_dim, num_ids, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

        self.attr_heads: nn.ModuleList | None = None
        if mode != "id":
            assert attr_classes is not None
            self.attr_heads = nn.ModuleList(_bn_fc(dim, c) for c in attr_classes)
        self.asam: ASAM | None = None
        if mode == "san-gal":
            assert attr_classes is not None
            stage_channels = {f"layer{s}": self.backbone.channels[s - 1] for s in self.asam_stages}
            self.asam = ASAM(len(attr_classes), extra_sigmoid=extra_sigmoid, gain=asam_gain, form=asam_form,
                             stage_channels=stage_channels)  # created last: zero gates, no random draws

    def forward(
        self, x: Tensor, aah: Sequence[Tensor] | None = None, attention: bool = False
    ) -> ReIDOutput:
        """Embed a batch of images.

        Args:
            x: (B, 3, H, W) normalised images.
            aah: mode ``"san-gal"`` only: heat maps at layer2, layer3 and layer4,
                each (B, K, h, w) (any h, w: ASAM resizes them).
            attention: also return the net's own stage attention (training with ``loss.guide``).

        Raises:
            ValueError: heat maps missing in mode ``"san-gal"``, given in another
                mode (they would silently do nothing), or of the wrong shape.
        """
        aah = self._check_aah(x, aah)
        bb = self.backbone
        a = bb.layer1(bb.forward_stem(x))  # (B, C1, H/4, W/4)
        seen: list[Tensor] = []
        for stage, layer in ((2, bb.layer2), (3, bb.layer3), (4, bb.layer4)):  # H/8, H/16, H/16 (last stride 1)
            a = layer(a)
            if attention:
                seen.append(stage_attention(a))
            if aah is not None and stage in self.asam_stages:
                a = self._attend(a, aah[stage - 2], f"layer{stage}")
        pooled = F.adaptive_avg_pool2d(a, 1).flatten(1)  # (B, D)
        global_features = torch.cat([pooled, map_pool(a, aah[2])], 1) if self.attr_pool else pooled  # (B, 2D)
        features = self.bottleneck(global_features)  # (B, D) or (B, 2D)
        logits = self.classifier(features)  # (B, num_ids)
        attr_logits = None
        if self.attr_heads is not None:
            attr_logits = [head(pooled) for head in self.attr_heads]  # K x (B, C_k)
        return ReIDOutput(features, global_features, logits, attr_logits, tuple(seen) if attention else None)

    def _check_aah(self, x: Tensor, aah: Sequence[Tensor] | None) -> Sequence[Tensor] | None:
        if self.asam is None:
            if aah is not None:
                raise ValueError(
                    f"heat maps were given to a ReIDNet in mode {self.mode!r}, which has no "
                    f"attention; only mode 'san-gal' uses them"
                )
            return None
        if aah is None:
            raise ValueError(
                "ReIDNet in mode 'san-gal' needs heat maps: forward(x, aah=(aah2, aah3, aah4))"
            )
        if len(aah) != 3:
            raise ValueError(f"aah must hold 3 heat-map tensors (layer2, layer3, layer4), got {len(aah)}")
        return aah

    def _attend(self, activation: Tensor, maps: Tensor, stage: str) -> Tensor:
        assert self.asam is not None
        try:
            return self.asam(activation, maps, stage)
        except ValueError as exc:
            raise ValueError(f"ASAM after {stage}: {exc}") from exc

    def asam_gates(self) -> dict[str, float]:
        """The learned ASAM amounts to log while training (``gated``: g per stage, ``mixed``: mean |W|); else {}."""
        return self.asam.learned() if self.asam is not None else {}

    def arch_dict(self) -> dict[str, Any]:
        """The checkpoint ``arch`` keys this model knows (:data:`sangal.models.arch_keys.ARCH`)."""
        return arch_of(self, "reid")


def _bn_fc(dim: int, num_classes: int) -> nn.Sequential:
    """Attribute head: BN then a linear classifier (the paper's BN-FC, softmax in the loss)."""
    fc = nn.Linear(dim, num_classes)
    nn.init.normal_(fc.weight, std=0.001)
    nn.init.zeros_(fc.bias)
    return nn.Sequential(nn.BatchNorm1d(dim), fc)
