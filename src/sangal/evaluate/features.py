"""Retrieval features of N images (what :class:`~sangal.evaluate.predictor.Predictor` extracts; scored in
:mod:`sangal.evaluate.reid` and :mod:`sangal.metrics`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FeatureSet", "batch_paths"]


@dataclass
class FeatureSet:
    """Features of N images, in loader order.

    Attributes:
        feats: (N, D) float32, L2-normalised.
        pids: (N,) int64 identity labels.
        camids: (N,) int64 camera indices.
        paths: N image paths.
        attr_probs: K arrays (N, C_k) of attribute-head probabilities, or None
            (model without attribute heads).
    """

    feats: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]
    attr_probs: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)


def batch_paths(batch: dict[str, Any], loader: Iterable[Any]) -> list[str]:
    """Image paths of a batch: its ``path`` entry, else looked up from the dataset's records."""
    if "path" in batch:
        return [str(p) for p in batch["path"]]
    records = getattr(getattr(loader, "dataset", None), "records", None)
    if records is None:
        raise ValueError("batches carry no 'path' and the loader's dataset has no records to look them up")
    return [str(records[int(i)].path) for i in batch["index"]]
