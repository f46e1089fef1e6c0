"""Attribute mA (Lin et al.) and accuracy on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from sangal.metrics.attributes import mean_accuracy


def test_hand_computed_binary_and_multiclass() -> None:
    # attribute 0 (binary): targets 1,1,1,0 ; preds 1,0,1,0 -> TPR 2/3, TNR 1 -> mA 5/6, acc 3/4
    # attribute 1 (3-way): targets 0,1,2,2 ; preds 0,2,2,1 -> recalls 1, 0, 1/2 -> mA 1/2, acc 2/4
    target = np.array([[1, 0], [1, 1], [1, 2], [0, 2]])
    pred = np.array([[1, 0], [0, 2], [1, 2], [0, 1]])
    out = mean_accuracy(pred, target, [2, 3])
    np.testing.assert_allclose(out["per_attribute_mA"], [5 / 6, 1 / 2])
    np.testing.assert_allclose(out["per_attribute_accuracy"], [3 / 4, 2 / 4])
    assert out["mA"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert out["accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)


def test_ignore_index_and_absent_classes_skipped() -> None:
    # attribute 0: one ignored row; valid targets 1,1 (class 0 absent) -> mA = recall of class 1 = 1/2
    # attribute 1: 4-way, only classes 0 and 3 present -> recalls 1 and 0 -> 1/2
    target = np.array([[-1, 0], [1, 3], [1, 0]])
    pred = np.array([[0, 0], [1, 2], [0, 0]])
    out = mean_accuracy(pred, target, [2, 4])
    np.testing.assert_allclose(out["per_attribute_mA"], [1 / 2, 1 / 2])
    np.testing.assert_allclose(out["per_attribute_accuracy"], [1 / 2, 2 / 3])


def test_fully_ignored_attribute_is_nan_and_excluded() -> None:
    target = np.array([[1, -1], [0, -1]])
    pred = np.array([[1, 0], [0, 1]])
    out = mean_accuracy(pred, target, [2, 2])
    assert np.isnan(out["per_attribute_mA"][1])
    assert out["mA"] == 1.0 and out["accuracy"] == 1.0


def test_majority_guess_scores_half() -> None:
    # always predicting the frequent class gives high accuracy but mA 0.5
    target = np.array([[0]] * 9 + [[1]])
    out = mean_accuracy(np.zeros_like(target), target, [2])
    assert out["accuracy"] == pytest.approx(0.9) and out["mA"] == pytest.approx(0.5)


def test_shape_and_range_errors() -> None:
    with pytest.raises(ValueError, match="both be"):
        mean_accuracy(np.zeros((3, 2)), np.zeros((3, 3)), [2, 2])
    with pytest.raises(ValueError, match="num_classes"):
        mean_accuracy(np.zeros((3, 2)), np.zeros((3, 2)), [2])
    with pytest.raises(ValueError, match="attribute 0"):
        mean_accuracy(np.zeros((1, 1)), np.array([[2]]), [2])
