"""Attribute-net training set: the train split plus the labelled identities of extra sets."""

from __future__ import annotations

import numpy as np
import pytest

from sangal.config import load_config
from sangal.data import setup
from sangal.errors import SangalError
from sangal.train.attr import attribute_training_set


def test_extra_roots_add_every_labelled_identity(tiny_synth, tiny_overrides, tmp_path) -> None:
    from sangal.data.synthetic import generate_synthetic

    other = generate_synthetic(tmp_path / "other", num_ids=6, num_cams=2, seed=5, height=64, width=32)
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path / "out") + [f"attr_train.extra_roots=[{other}]"])
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    records, targets = attribute_training_set(cfg, dataset, table)
    extra_cfg = load_config(None, tiny_overrides(other, tmp_path / "x"))
    extra = setup.load_reid_dataset(extra_cfg)
    labelled = [r for r in list(extra.query) + list(extra.gallery) if r.raw_pid > 0]
    assert len(records) == len(dataset.train) + len(extra.train) + len(labelled)
    assert targets.shape == (len(records), len(table.schema))
    # the extra set's rows carry its own labels, looked up in its own .mat
    extra_table = setup.load_attributes(extra_cfg, extra)
    np.testing.assert_array_equal(targets[len(dataset.train):len(dataset.train) + len(extra.train)],
                                  setup.attribute_targets(extra_table, extra.train, "train"))


def test_a_missing_extra_root_names_it(tiny_synth, tiny_overrides, tmp_path) -> None:
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path / "out") + [f"attr_train.extra_roots=[{tmp_path}/nope]"])
    dataset = setup.load_reid_dataset(cfg)
    with pytest.raises(SangalError, match="nope"):
        attribute_training_set(cfg, dataset, setup.load_attributes(cfg, dataset))
