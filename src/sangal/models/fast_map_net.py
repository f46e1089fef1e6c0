"""The fast-map network: a light predictor of layer2/layer3 logit Grad-CAM maps, distilled from exact AAH (see
sangal.aah.fast).

What it predicts. At stage s the exact map of head k, target class c, is
``ReLU(y_c (P_c - sum_j y_j P_j))`` where ``P_j = sum_d w_jd(x) A^s_d`` is the
Grad-CAM map of logit j (eq. 2 with ``z_j`` in place of ``y^k``). ``P_j`` is
linear in the stage activation with weights ``w_j(x)`` that depend on the
image only through layer4's ReLU gates. The predictor mirrors that form:

* a 1x1 convolution of ``A^s`` (C_s -> sum C_k): the linear, image-independent
  part of ``w_j`` (Grad-CAM with averaged channel weights);
* a 3x3 convolution over a 64-channel reduction of ``A^s`` and the exact
  layer4 logit maps ``Z`` (upsampled to stage s): ``Z`` says where each class's
  evidence lies in this image, which is what the image-dependent part of
  ``w_j`` changes; the 3x3 window lets it shift by a cell.

The class choice, the softmax weights and the ReLU stay exact outside the
predictor, so one set of ``P_j`` serves label-guided and predicted targets.
Cost at 256x128 with ResNet-50: about 0.2 M parameters and 0.05 GFLOPs per
image (layer2 + layer3), against 4 GFLOPs for the attribute net's forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FastMapNet", "StageHead"]


class StageHead(nn.Module):
    """Logit maps of one stage: A (B, C_s, h, w), Z (B, J, h4, w4) -> (B, J, h, w)."""

    def __init__(self, channels: int, num_logits: int, hidden: int = 64) -> None:
        super().__init__()
        self.linear = nn.Conv2d(channels, num_logits, 1)
        self.reduce = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                    nn.ReLU(inplace=True))
        self.prior_norm = nn.BatchNorm2d(num_logits)  # Z's scale varies with the attribute net's heads
        self.context = nn.Conv2d(hidden + num_logits, num_logits, 3, padding=1)

    def forward(self, a: Tensor, z4: Tensor) -> Tensor:
        prior = z4
        if z4.shape[-2:] != a.shape[-2:]:
            prior = F.interpolate(z4, size=a.shape[-2:], mode="bilinear", align_corners=False)  # (B, J, h, w)
        hidden = self.reduce(a)  # (B, hidden, h, w)
        return self.linear(a) + self.context(torch.cat([hidden, self.prior_norm(prior)], dim=1))  # (B, J, h, w)


class FastMapNet(nn.Module):
    """Two :class:`StageHead` s (layer2, layer3) sharing the exact layer4 logit maps as prior.

    Args:
        stage_channels: (C2, C3) of the attribute net's backbone.
        num_logits: sum of C_k over the K attribute heads.
        hidden: width of the 3x3 context branch.
    """

    def __init__(self, stage_channels: tuple[int, int], num_logits: int, hidden: int = 64) -> None:
        super().__init__()
        self.stage_channels = (int(stage_channels[0]), int(stage_channels[1]))
        self.num_logits = int(num_logits)
        self.hidden = int(hidden)
        self.layer2 = StageHead(self.stage_channels[0], self.num_logits, self.hidden)
        self.layer3 = StageHead(self.stage_channels[1], self.num_logits, self.hidden)

    def forward(self, a2: Tensor, a3: Tensor, z4: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C2, h2, w2), (B, C3, h3, w3), (B, J, h4, w4) -> logit maps (B, J, h2, w2), (B, J, h3, w3)."""
        return self.layer2(a2, z4), self.layer3(a3, z4)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (stored beside the weights)."""
        return {"stage_channels": list(self.stage_channels), "num_logits": self.num_logits, "hidden": self.hidden}
