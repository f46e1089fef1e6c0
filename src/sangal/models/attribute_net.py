"""Pedestrian attribute classification network (paper §3.1, the AAH branch).

The attribute branch of SAN-GAL: its own backbone (by default the Re-ID
branch's structure, never its parameters — §3 special skill 2; any entry of
:data:`~sangal.models.backbone.BACKBONES`, e.g. a light MobileNetV2), global average
pooling, then one BN-FC head per attribute (the paper's "BN-FC-Softmax"; the
softmax is applied where probabilities are needed: :meth:`AttributeNet.predict`,
Grad-CAM's ``y^k`` of eq. (1) and the cross-entropy loss).

The forward pass is staged (timm's ``forward_features``/``forward_head``
split) so :mod:`sangal.aah.gradcam` can take gradients of the heads with respect
to the outputs of layer2, layer3 and layer4 — the three scale-changing stages
where the paper computes its heat maps — without module hooks::

    a2 = net.forward_to_stage2(x)        # stem, layer1, layer2
    a3 = net.stage2_to_3(a2)             # layer3
    a4 = net.stage3_to_4(a3)             # layer4
    logits = net.head_from_stage4(a4)    # GAP + BN-FC per attribute
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sangal.errors import ConfigError
from sangal.models.arch_keys import arch_of
from sangal.models.backbone import StagedBackbone, build_backbone

__all__ = ["AttributeOutput", "AttributeNet", "BNFCHead"]


@dataclass
class AttributeOutput:
    """Everything one forward pass of :class:`AttributeNet` produces.

    Attributes:
        logits: K tensors (B, C_k), one per attribute head (pre-softmax).
        features: (B, D) globally average-pooled layer4 feature.
        stages: outputs of layer2, layer3, layer4: (B, C2, H/8, W/8),
            (B, C3, H/16, W/16), (B, C4, H/16, W/16) with last stride 1.
    """

    logits: list[Tensor]
    features: Tensor
    stages: tuple[Tensor, Tensor, Tensor]


class BNFCHead(nn.Module):
    """One attribute classifier: BatchNorm1d on the pooled feature, then Linear.

    (B, D) -> (B, num_classes) logits; the paper's BN-FC-Softmax without the
    softmax. Initialised like torchreid/fast-reid classifiers (BN weight 1,
    bias 0; FC weight N(0, 0.001^2), bias 0).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, f: Tensor) -> Tensor:
        return self.fc(self.bn(f))  # (B, D) -> (B, C_k)


class AttributeNet(nn.Module):
    """Backbone + GAP + one BN-FC head per attribute.

    Args:
        num_classes: classes of each attribute head, e.g. Market-1501's binary
            schema ``[2] * 9 + [4] + [2] * 17`` (K = 27).
        backbone: a name of :data:`~sangal.models.backbone.BACKBONES` (resnet50, mobilenet_v2, ...).
        pretrained: ImageNet weights (``True``), a local weights file, or ``False``.
        last_stride: stride of layer4 (1 keeps layer4 at H/16 x W/16).
    """

    def __init__(
        self,
        num_classes: list[int],
        backbone: str = "resnet50",
        pretrained: bool | str | Path = True,
        last_stride: int = 1,
    ) -> None:
        super().__init__()
        if not num_classes or any(int(c) < 2 for c in num_classes):
            raise ConfigError(
                f"num_classes must list at least one attribute with >= 2 classes each, got {num_classes!r}"
            )
        self.num_classes: list[int] = [int(c) for c in num_classes]
        self.backbone: StagedBackbone = build_backbone(backbone, pretrained, last_stride)
        self.feature_dim: int = self.backbone.channels[3]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.heads = nn.ModuleList(BNFCHead(self.feature_dim, c) for c in self.num_classes)

    @property
    def num_attributes(self) -> int:
        """K, the number of attribute heads."""
        return len(self.num_classes)

    # ----------------------------------------------------------------- stages
    def forward_to_stage2(self, x: Tensor) -> Tensor:
        """Stem, layer1, layer2: (B, 3, H, W) -> a2 (B, C2, H/8, W/8)."""
        b = self.backbone
        return b.layer2(b.layer1(b.forward_stem(x)))

    def stage2_to_3(self, a2: Tensor) -> Tensor:
        """layer3: a2 (B, C2, H/8, W/8) -> a3 (B, C3, H/16, W/16)."""
        return self.backbone.layer3(a2)

    def stage3_to_4(self, a3: Tensor) -> Tensor:
        """layer4: a3 (B, C3, H/16, W/16) -> a4 (B, C4, H/16 or H/32, ...)."""
        return self.backbone.layer4(a3)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 3, H, W) -> outputs of layer2, layer3, layer4."""
        a2 = self.forward_to_stage2(x)
        a3 = self.stage2_to_3(a2)
        return a2, a3, self.stage3_to_4(a3)

    def pool_features(self, a4: Tensor) -> Tensor:
        """Global average pooling: a4 (B, D, h, w) -> (B, D)."""
        return self.pool(a4).flatten(1)

    def head_from_features(self, features: Tensor) -> list[Tensor]:
        """BN-FC heads on the pooled feature: (B, D) -> K tensors (B, C_k)."""
        return [head(features) for head in self.heads]

    def head_from_stage4(self, a4: Tensor) -> list[Tensor]:
        """GAP + BN-FC heads on a layer4 activation: (B, D, h, w) -> K tensors (B, C_k)."""
        return self.head_from_features(self.pool_features(a4))

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> AttributeOutput:
        """(B, 3, H, W) -> :class:`AttributeOutput` (logits, pooled features, stages)."""
        a2, a3, a4 = self.forward_stages(x)
        features = self.pool_features(a4)  # (B, D)
        return AttributeOutput(
            logits=self.head_from_features(features), features=features, stages=(a2, a3, a4)
        )

    @torch.no_grad()
    def predict(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Softmax probabilities and predicted labels, without gradients.

        Runs in the module's current mode: call ``.eval()`` first for inference
        (in train mode BatchNorm uses batch statistics and updates its buffers).

        Returns:
            probs: K tensors (B, C_k), rows summing to 1.
            labels: (B, K) int64, the argmax class of each head.
        """
        logits = self.forward(x).logits
        probs = [torch.softmax(z.float(), dim=1) for z in logits]
        labels = torch.stack([p.argmax(dim=1) for p in probs], dim=1)  # (B, K)
        return probs, labels

    @property
    def backbone_name(self) -> str:
        return self.backbone.name

    @property
    def last_stride(self) -> int:
        return self.backbone.last_stride

    @property
    def attr_classes(self) -> list[int]:
        return list(self.num_classes)

    def arch_dict(self) -> dict[str, Any]:
        """The checkpoint ``arch`` entries that rebuild this network (:data:`sangal.models.arch_keys.ARCH`)."""
        return arch_of(self, "attribute")
