"""The ``arch`` dict of a checkpoint: everything that rebuilds a network, from a config or back into a model.

Checkpoints store it in state.json (docs/design.md); :func:`build_model` is the only place that
turns it into an :class:`~sangal.models.attribute_net.AttributeNet` or a :class:`~sangal.models.reid_net.ReIDNet`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from sangal.config import Config
from sangal.data.attributes import schema_name
from sangal.errors import ConfigError

__all__ = ["arch_for", "build_model"]


def arch_for(cfg: Config, kind: str, num_ids: int = 0, attr_classes: list[int] | None = None) -> dict:
    """The `arch` dict stored in checkpoints: everything needed to rebuild the model."""
    arch = {
        "kind": kind,
        "backbone": cfg.model.attribute_backbone() if kind == "attribute" else cfg.model.backbone,
        "last_stride": cfg.model.last_stride,
        "attr_classes": list(attr_classes or []),
        "dataset": schema_name(cfg.data.dataset),
        "colour_mode": cfg.data.colour_mode,
        "height": cfg.data.height,
        "width": cfg.data.width,
    }
    if kind == "reid":
        arch.update(num_ids=num_ids, mode=cfg.model.mode, extra_sigmoid=cfg.model.extra_sigmoid,
                    asam_stages=list(cfg.model.asam_stages), asam_gain=cfg.model.asam_gain,
                    asam_form=cfg.model.asam_form)
    return arch


def build_model(arch: Mapping[str, Any], pretrained: bool | str | Path = False) -> nn.Module:
    """Build the ReIDNet, AttributeNet or MapPredictor that ``arch`` describes (random or pretrained backbone)."""
    kind = arch.get("kind")
    try:
        if kind == "attribute":
            from sangal.models.attribute_net import AttributeNet

            return AttributeNet(list(arch["attr_classes"]), backbone=arch["backbone"],
                                pretrained=pretrained, last_stride=int(arch.get("last_stride", 1)))
        if kind == "reid":
            from sangal.models.reid_net import ReIDNet

            attr = arch.get("attr_classes")
            return ReIDNet(int(arch["num_ids"]), list(attr) if attr else None,
                           mode=arch.get("mode", "san-gal"), backbone=arch["backbone"],
                           pretrained=pretrained, last_stride=int(arch.get("last_stride", 1)),
                           extra_sigmoid=bool(arch.get("extra_sigmoid", False)),
                           asam_stages=arch.get("asam_stages") or (2, 3, 4),
                           asam_gain=float(arch.get("asam_gain", 1.0)),
                           asam_form=str(arch.get("asam_form", "paper")))  # written before asam_form: paper
        if kind == "map_predictor":
            from sangal.models.map_predictor import MapPredictor

            return MapPredictor(tuple(arch["stage_channels"]), int(arch["num_logits"]), int(arch["hidden"]))
    except KeyError as exc:
        raise ConfigError(f"arch {dict(arch)} lacks {exc.args[0]!r}") from exc
    raise ConfigError(f"arch kind must be 'reid', 'attribute' or 'map_predictor', got {kind!r}")
