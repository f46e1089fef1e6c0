"""Networks of SAN-GAL: staged backbones (ResNet, MobileNetV2), attribute network, parameter-free ASAM, Re-ID network."""

from sangal.models.asam import ASAM, asam, block_bounds
from sangal.models.attribute_net import AttributeNet, AttributeOutput
from sangal.models.backbone import ResNetBackbone, StagedBackbone, build_backbone
from sangal.models.reid_net import MODES, ReIDNet, ReIDOutput

__all__ = [
    "ASAM",
    "MODES",
    "AttributeNet",
    "AttributeOutput",
    "ReIDNet",
    "ReIDOutput",
    "ResNetBackbone",
    "StagedBackbone",
    "asam",
    "block_bounds",
    "build_backbone",
]
