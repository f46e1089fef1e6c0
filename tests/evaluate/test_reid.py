"""eval.same_camera: what a single-camera set does under the standard protocol, and the way out."""

from __future__ import annotations

import numpy as np
import pytest

from sangal.config import load_config
from sangal.errors import ConfigError
from sangal.evaluate.reid import evaluate_features, same_camera_camids


def _one_camera_features():
    """Two ids, query and gallery all from camera 0; each query's nearest gallery image is its own id."""
    qf = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    gf = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]], dtype=np.float32)
    return qf, gf, np.array([1, 2]), np.array([1, 2, 2]), np.zeros(2, np.int64), np.zeros(3, np.int64)


def test_auto_keeps_same_camera_matches_on_a_one_camera_set(caplog) -> None:
    qf, gf, qp, gp, qc, gc = _one_camera_features()
    with caplog.at_level("WARNING"):
        metrics = evaluate_features(qf, gf, qp, gp, qc, gc, load_config(None, []))
    assert metrics["rank1"] == 1.0 and metrics["num_valid_queries"] == 2
    assert any("one camera" in r.getMessage() for r in caplog.records)
    # query 2 (id 2) ranks g1 (id 2) first, then g2 (id 2): AP 1; query 1: AP 1 -> mAP 1
    assert metrics["mAP"] == pytest.approx(1.0)


def test_exclude_on_one_camera_is_a_config_error_not_an_empty_score() -> None:
    qf, gf, qp, gp, qc, gc = _one_camera_features()
    with pytest.raises(ConfigError, match="one camera: eval.same_camera=exclude would skip every query"):
        evaluate_features(qf, gf, qp, gp, qc, gc, load_config(None, ["eval.same_camera=exclude"]))


def test_policies_on_camids() -> None:
    q, g = np.array([0, 1]), np.array([0, 1, 1])
    assert same_camera_camids(q, g, "auto").tolist() == [0, 1]  # several cameras: standard protocol
    assert same_camera_camids(q, g, "exclude").tolist() == [0, 1]
    assert same_camera_camids(q, g, "keep").tolist() == [2, 2]  # a camera no gallery image has
