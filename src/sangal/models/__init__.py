"""Networks of SAN-GAL: staged backbones (ResNet, MobileNetV2, ...), the attribute network, parameter-free ASAM, the
Re-ID network, the map predictor. Built from a config or a checkpoint's ``arch`` (``models.arch``); trained in
``train``, read by ``aah`` and ``evaluate``."""

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
