"""Attribute filters for gallery search: ``where={"backpack": "yes", "upper_color": "red"}``.

A filter names an attribute of the index's schema (:func:`sangal.data.attributes.get_schema`)
and one of its class names; a gallery image passes when its *predicted* class
(the argmax of the stored probabilities) is that class. Every condition must hold.

Body-part colour aliases: ``upper_colour`` / ``upper_color`` and ``lower_colour`` /
``lower_color`` name the colour of the upper / lower clothing.

* In the binary schema (Market K=27, Duke K=23, one no/yes head per colour field
  ``upblack``, ``upwhite``, ... / ``downblack``, ...), the colour of an image is the
  colour whose head gives the highest probability of "yes" -- a body part always has
  one colour here, even when no head says "yes" with more than 0.5.
* In the merged schema the alias names the ``upper_colour`` / ``lower_colour`` head
  directly.

Names and values are matched case-insensitively; an unknown name or class raises a
:class:`~sangal.errors.ConfigError` listing the valid ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sangal.data.attributes import AttributeSchema
from sangal.errors import ConfigError

__all__ = ["COLOUR_ALIASES", "ColourGroup", "colour_groups", "parse_where", "predicted_attributes", "where_mask"]

logger = logging.getLogger(__name__)

#: alias -> body part ("upper" / "lower"); both spellings are accepted.
COLOUR_ALIASES = {
    "upper_colour": "upper",
    "upper_color": "upper",
    "lower_colour": "lower",
    "lower_color": "lower",
}
# body part -> (.mat field prefix of its binary colour heads, merged head name)
_PARTS = {"upper": ("up", "upper_colour"), "lower": ("down", "lower_colour")}


@dataclass(frozen=True)
class ColourGroup:
    """The heads that give one body part's colour.

    ``merged_head`` is the index of a multi-class colour head (merged schema), or None;
    then ``heads[i]`` is the binary head of colour ``colours[i]`` (binary schema).
    """

    part: str
    colours: tuple[str, ...]
    heads: tuple[int, ...] = ()
    merged_head: int | None = None


def colour_groups(schema: AttributeSchema) -> dict[str, ColourGroup]:
    """Body part -> :class:`ColourGroup` for the parts whose colour the schema predicts."""
    groups: dict[str, ColourGroup] = {}
    names = schema.names
    for part, (prefix, merged) in _PARTS.items():
        if merged in names:
            k = names.index(merged)
            groups[part] = ColourGroup(part, schema.attributes[k].classes, merged_head=k)
            continue
        heads = [
            (k, a.name[len(prefix) :])
            for k, a in enumerate(schema.attributes)
            if a.name.startswith(prefix) and a.name != prefix and a.num_classes == 2 and a.region == part
        ]
        if heads:
            groups[part] = ColourGroup(part, tuple(c for _, c in heads), heads=tuple(k for k, _ in heads))
    return groups


def _colour_index(group: ColourGroup, probs: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) index into ``group.colours`` of the most probable colour of each image."""
    if group.merged_head is not None:
        return np.asarray(probs[group.merged_head]).argmax(axis=1)
    yes = np.stack([np.asarray(probs[k])[:, 1] for k in group.heads], axis=1)  # (N, colours)
    return yes.argmax(axis=1)


def parse_where(text: str | None) -> dict[str, str]:
    """``"upper_color=red,backpack=yes"`` -> ``{"upper_color": "red", "backpack": "yes"}``.

    Empty or None gives ``{}``. Names and values are stripped; a piece without ``=``,
    an empty name or value, or a name given twice raises ConfigError.
    """
    where: dict[str, str] = {}
    if not text or not text.strip():
        return where
    for piece in text.split(","):
        if not piece.strip():
            continue
        name, sep, value = piece.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ConfigError(
                f"filter {piece.strip()!r} is not NAME=VALUE (e.g. 'upper_color=red,backpack=yes')"
            )
        if name in where:
            raise ConfigError(f"filter names {name!r} twice ({where[name]!r} and {value!r})")
        where[name] = value
    return where


def _valid_names(schema: AttributeSchema, groups: Mapping[str, ColourGroup]) -> list[str]:
    aliases = [a for a, part in COLOUR_ALIASES.items() if part in groups and a not in schema.names]
    return schema.names + aliases


def _match_class(value: str, classes: Sequence[str], name: str) -> int:
    lowered = [c.lower() for c in classes]
    if value.strip().lower() not in lowered:
        raise ConfigError(f"attribute {name!r} has no class {value!r}; valid: {', '.join(classes)}")
    return lowered.index(value.strip().lower())


def where_mask(
    where: Mapping[str, str],
    schema: AttributeSchema,
    probs: Sequence[np.ndarray],
) -> np.ndarray:
    """(N,) bool: which images' predicted attributes satisfy every condition of ``where``.

    ``probs`` holds the K per-attribute probability arrays (N, C_k) of the index.
    All names and classes are checked before anything is computed.
    """
    groups = colour_groups(schema)
    lower_names = {n.lower(): k for k, n in enumerate(schema.names)}
    n = len(probs[0]) if len(probs) else 0
    mask = np.ones(n, dtype=bool)
    conditions = []
    for raw_name, value in where.items():
        name = raw_name.strip().lower()
        if name in lower_names:
            k = lower_names[name]
            attribute = schema.attributes[k]
            conditions.append(("head", k, _match_class(value, attribute.classes, attribute.name)))
        elif name in COLOUR_ALIASES and COLOUR_ALIASES[name] in groups:
            group = groups[COLOUR_ALIASES[name]]
            conditions.append(("colour", group, _match_class(value, group.colours, raw_name)))
        else:
            raise ConfigError(
                f"unknown attribute {raw_name!r} in filter for the {schema.dataset}/{schema.colour_mode} "
                f"schema; valid: {', '.join(_valid_names(schema, groups))}"
            )
    for kind, target, cls in conditions:
        if kind == "head":
            mask &= np.asarray(probs[target]).argmax(axis=1) == cls
        else:
            mask &= _colour_index(target, probs) == cls
    logger.debug("filter %s keeps %d of %d images", dict(where), int(mask.sum()), n)
    return mask


def predicted_attributes(schema: AttributeSchema, probs: Sequence[np.ndarray]) -> list[dict[str, str]]:
    """Per image: attribute name -> predicted class name, plus ``upper_colour`` / ``lower_colour``.

    ``probs``: K arrays (N, C_k). The colour entries follow the same rule as the
    filters, so a match shown with ``upper_colour=red`` passes ``upper_color=red``.
    """
    labels = [np.asarray(p).argmax(axis=1) for p in probs]
    n = len(labels[0]) if labels else 0
    out = [{a.name: a.classes[int(labels[k][i])] for k, a in enumerate(schema.attributes)} for i in range(n)]
    for part, group in colour_groups(schema).items():
        alias = _PARTS[part][1]
        if group.merged_head is not None:
            continue  # already a head of that name
        idx = _colour_index(group, probs)
        for i in range(n):
            out[i][alias] = group.colours[int(idx[i])]
    return out
