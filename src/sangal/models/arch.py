"""The ``arch`` dict of a checkpoint: everything that rebuilds a network, from a config or back into a model.

Checkpoints store it in state.json (docs/design.md); its keys are the table :data:`~sangal.models.arch_keys.ARCH`.
:func:`build_model` turns it into an :class:`~sangal.models.attribute_net.AttributeNet`, a
:class:`~sangal.models.reid_net.ReIDNet` or a :class:`~sangal.models.fast_map_net.FastMapNet`; every caller
that makes one of these networks goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from sangal.config import Config
from sangal.data.attributes import schema_name
from sangal.errors import ConfigError
from sangal.models.arch_keys import ARCH, arch_value

__all__ = ["arch_for", "build_model"]


def arch_for(cfg: Config, kind: str, num_ids: int = 0, attr_classes: list[int] | None = None) -> dict:
    """The `arch` dict stored in checkpoints: everything needed to rebuild the model (:data:`ARCH`'s keys of
    ``kind``, read from the config, the data's ``num_ids`` and ``attr_classes``)."""
    given = {"kind": kind, "num_ids": num_ids, "attr_classes": list(attr_classes or []),
             "dataset": schema_name(cfg.data.dataset),
             "backbone": cfg.model.attribute_backbone() if kind == "attribute" else cfg.model.backbone}
    arch = {}
    for key in ARCH:
        if kind in key.kinds:
            value = given[key.name] if key.name in given else _config_value(cfg, key.config)
            arch[key.name] = list(value) if isinstance(value, (list, tuple)) else value
    return arch


def _config_value(cfg: Config, dotted: str | None) -> Any:
    section, name = str(dotted).split(".")
    return getattr(getattr(cfg, section), name)


def build_model(arch: Mapping[str, Any], pretrained: bool | str | Path = False) -> nn.Module:
    """Build the ReIDNet, AttributeNet or FastMapNet that ``arch`` describes (random or pretrained backbone);
    an entry an older checkpoint lacks takes its :data:`ARCH` default."""
    kind = arch.get("kind")
    try:
        if kind == "attribute":
            from sangal.models.attribute_net import AttributeNet

            return AttributeNet(list(arch["attr_classes"]), backbone=arch["backbone"],
                                pretrained=pretrained, last_stride=int(arch_value(arch, "last_stride")))
        if kind == "reid":
            from sangal.models.reid_net import ReIDNet

            attr = arch.get("attr_classes")
            return ReIDNet(int(arch["num_ids"]), list(attr) if attr else None,
                           mode=arch_value(arch, "mode"), backbone=arch["backbone"],
                           pretrained=pretrained, last_stride=int(arch_value(arch, "last_stride")),
                           extra_sigmoid=bool(arch_value(arch, "extra_sigmoid")),
                           asam_stages=arch.get("asam_stages") or arch_value({}, "asam_stages"),
                           asam_gain=float(arch_value(arch, "asam_gain")),
                           asam_form=str(arch_value(arch, "asam_form")),
                           attr_pool=bool(arch_value(arch, "attr_pool")))
        if kind == "map_predictor":
            from sangal.models.fast_map_net import FastMapNet

            return FastMapNet(tuple(arch["stage_channels"]), int(arch["num_logits"]), int(arch["hidden"]))
    except KeyError as exc:
        raise ConfigError(f"arch {dict(arch)} lacks {exc.args[0]!r}") from exc
    raise ConfigError(f"arch kind must be 'reid', 'attribute' or 'map_predictor', got {kind!r}")
