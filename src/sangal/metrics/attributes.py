"""Attribute recognition metrics: label-based mean accuracy (mA) as in Lin et al. 2019.

For attribute k with C_k classes, mA_k is the mean over its classes of the per-class
recall (balanced accuracy; for a binary attribute (TPR + TNR) / 2); mA is the mean of
mA_k over attributes. Targets equal to IGNORE_INDEX are skipped. A class absent from
the (valid) targets has no recall and is left out of that attribute's mean; an
attribute with no valid target at all is NaN and left out of the overall means.
"""

from __future__ import annotations

import logging

import numpy as np

from sangal.data.attributes import IGNORE_INDEX

logger = logging.getLogger(__name__)


def mean_accuracy(pred: np.ndarray, target: np.ndarray, num_classes: list[int]) -> dict:
    """mA and plain accuracy of (N, K) integer predictions against (N, K) targets.

    Returns ``{"mA": float, "accuracy": float, "per_attribute_mA": (K,) array,
    "per_attribute_accuracy": (K,) array}``; "accuracy" is the mean over attributes of
    the share of correct valid labels.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (N, K); got {pred.shape} and {target.shape}")
    if len(num_classes) != pred.shape[1]:
        raise ValueError(f"num_classes has {len(num_classes)} entries for K={pred.shape[1]} attributes")
    k_count = pred.shape[1]
    per_ma = np.full(k_count, np.nan)
    per_acc = np.full(k_count, np.nan)
    for k, n_cls in enumerate(num_classes):
        valid = target[:, k] != IGNORE_INDEX
        t, p = target[valid, k], pred[valid, k]
        if ((t < 0) | (t >= n_cls)).any():
            raise ValueError(f"attribute {k}: target values outside 0..{n_cls - 1} (or {IGNORE_INDEX} = ignore)")
        if t.size == 0:
            continue
        recalls = [np.mean(p[t == c] == c) for c in range(n_cls) if (t == c).any()]
        per_ma[k] = float(np.mean(recalls))
        per_acc[k] = float(np.mean(p == t))
    if np.isnan(per_ma).all():
        logger.warning("mean_accuracy: no valid targets for any attribute")
        overall_ma = overall_acc = float("nan")
    else:
        overall_ma, overall_acc = float(np.nanmean(per_ma)), float(np.nanmean(per_acc))
    return {
        "mA": overall_ma,
        "accuracy": overall_acc,
        "per_attribute_mA": per_ma,
        "per_attribute_accuracy": per_acc,
    }
