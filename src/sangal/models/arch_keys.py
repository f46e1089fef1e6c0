"""The one table of a checkpoint's ``arch`` keys: what each is, which models carry it, the config key it comes
from, its value where an older checkpoint lacks it, and whether a mismatch refuses the weights.

Both directions are derived from it: config -> arch (:func:`sangal.models.arch.arch_for`), model -> arch
(:func:`arch_of`, the networks' ``arch_dict``), checkpoint -> config (``sangal.evaluate.reid.checkpoint_config``),
the defaults :func:`sangal.models.arch.build_model` fills in and the checks of ``sangal.store.checkpoint``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ARCH", "ArchKey", "arch_of", "arch_value"]

NETS = ("reid", "attribute")


@dataclass(frozen=True)
class ArchKey:
    """One ``arch`` entry."""

    name: str
    kinds: tuple[str, ...]  # the model kinds that carry it
    config: str | None = None  # the dotted config key it is read from (None: from the data or the model)
    attribute: str | None = None  # the network attribute that holds it (None: not the network's)
    default: Any = None  # its meaning where a checkpoint written before it existed lacks it
    strict: bool = True  # it changes the network: a checkpoint that differs is refused (else: logged)


#: In the order checkpoints record them (arch_for writes them so; state.json keeps the order).
ARCH: tuple[ArchKey, ...] = (
    ArchKey("kind", ("reid", "attribute", "map_predictor")),
    ArchKey("backbone", NETS, "model.backbone", "backbone_name"),  # attribute: model.attr_backbone or this
    ArchKey("last_stride", NETS, "model.last_stride", "last_stride", 1),
    ArchKey("attr_classes", NETS, None, "attr_classes", []),
    ArchKey("dataset", NETS, "data.dataset", strict=False),  # its attribute schema's name
    ArchKey("colour_mode", NETS, "data.colour_mode", strict=False),
    ArchKey("height", NETS, "data.height", strict=False),
    ArchKey("width", NETS, "data.width", strict=False),
    ArchKey("num_ids", ("reid",), None, "num_ids"),
    ArchKey("mode", ("reid",), "model.mode", "mode", "san-gal"),
    ArchKey("extra_sigmoid", ("reid",), "model.extra_sigmoid", "extra_sigmoid", False),
    ArchKey("asam_stages", ("reid",), "model.asam_stages", "asam_stages", [2, 3, 4]),
    ArchKey("asam_gain", ("reid",), "model.asam_gain", "asam_gain", 1.0),
    ArchKey("asam_form", ("reid",), "model.asam_form", "asam_form", "paper"),  # written before asam_form: paper
    ArchKey("attr_pool", ("reid",), "model.attr_pool", "attr_pool", False),
)


def arch_value(arch: Mapping[str, Any], name: str) -> Any:
    """``arch[name]``, or the table's default where the checkpoint predates the key."""
    return arch.get(name, next(key.default for key in ARCH if key.name == name))


def arch_of(model: Any, kind: str) -> dict[str, Any]:
    """The ``arch`` entries a network of ``kind`` holds itself (the data's entries are the run's)."""
    out: dict[str, Any] = {"kind": kind}
    for key in ARCH:
        if key.attribute is not None and kind in key.kinds:
            value = getattr(model, key.attribute)
            if value is None and isinstance(key.default, list):  # an id net without attribute heads
                value = key.default
            out[key.name] = list(value) if isinstance(value, (list, tuple)) else value
    return out
