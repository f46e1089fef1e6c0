"""Writing identity-level attribute labels as Lin et al. ``.mat`` files (the inverse of the reader).

``attribute_mat_bytes`` produces the exact structure :func:`~sangal.data.attributes.read_attribute_mat`
reads: a ``market_attribute`` (or ``duke_attribute``) struct with ``train`` and ``test``,
one uint8 row per field (1 = no / first class, 2 = yes / second class, ..., 0 =
unlabelled) and ``image_index`` as 4-digit identity strings. Used by ``sangal label``
for pseudo-labels, so a dataset that had none trains ``id+attr`` and ``san-gal``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import scipy.io

from sangal.data.attributes import _COLOUR_GROUPS, _FIELDS, _STRUCT_NAMES, FILE_SPLITS, IGNORE_INDEX, AttributeSchema


def decode_labels(labels: np.ndarray, schema: AttributeSchema) -> dict[str, np.ndarray]:
    """(N, K) labels under ``schema`` -> the file's fields (uint8, 1-based, 0 = unlabelled).

    A merged colour head becomes its one-hot colour fields (2 for the chosen colour,
    1 for the others; all 0 when the head is unlabelled).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 2 or labels.shape[1] != len(schema):
        raise ValueError(f"labels must be (N, {len(schema)}) for the {schema.dataset} schema, got {labels.shape}")
    groups = {name: prefix for name, prefix, _ in _COLOUR_GROUPS}
    out: dict[str, np.ndarray] = {}
    for k, attribute in enumerate(schema.attributes):
        column = labels[:, k]
        known = column != IGNORE_INDEX
        if schema.colour_mode == "merged" and attribute.name in groups:
            for c, colour in enumerate(attribute.classes):
                out[groups[attribute.name] + colour] = np.where(known, np.where(column == c, 2, 1), 0).astype(np.uint8)
        else:
            out[attribute.name] = np.where(known, column + 1, 0).astype(np.uint8)
    missing = [f for f, _, _ in _FIELDS[schema.dataset] if f not in out]
    if missing:  # cannot happen for the built-in schemas; guards a new one
        raise ValueError(f"schema {schema.dataset}/{schema.colour_mode} does not cover fields {missing}")
    return out


def attribute_mat_bytes(schema: AttributeSchema, splits: dict[str, tuple[list[int], np.ndarray]]) -> bytes:
    """The Lin et al. file of ``{"train": (ids, labels (N, K)), "test": (...)}``, as bytes (the caller writes them)."""
    struct = {}
    for split in FILE_SPLITS:
        ids, labels = splits.get(split, ([], np.zeros((0, len(schema)), np.int64)))
        fields = decode_labels(labels, schema)
        node = {name: fields[name].reshape(1, -1) for name, _, _ in _FIELDS[schema.dataset]}
        index = np.empty((1, len(ids)), dtype=object)
        index[0, :] = [f"{int(i):04d}" for i in ids]
        node["image_index"] = index
        struct[split] = node
    buf = io.BytesIO()
    scipy.io.savemat(buf, {_STRUCT_NAMES[schema.dataset]: struct}, format="5", oned_as="row")
    return buf.getvalue()

