"""The map spec: one value from the config, saved in checkpoints, read back; the one place cache names come from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sangal.aah.spec import MapSpec, Targets
from sangal.config import load_config
from sangal.errors import ConfigError


def test_from_config_and_back_from_a_checkpoint_state() -> None:
    cfg = load_config(None, ["train.aah_targets=agnostic", "eval.aah=fast", "model.aah_normalize=minmax"])
    spec = MapSpec.from_config(cfg)
    assert spec == MapSpec("agnostic", "fast", "minmax")
    assert MapSpec.from_state({"map_spec": spec.to_dict()}) == spec
    # checkpoints written before the spec existed: read from their saved config, defaults where absent
    legacy = {"config": {"train": {"aah_targets": "predicted"}, "model": {"aah_normalize": "max"}}}
    assert MapSpec.from_state(legacy) == MapSpec("predicted", "exact", "max")
    assert MapSpec.from_state({}) == MapSpec("labels", "exact", "max")  # the paper's, before the spec existed


def test_cache_folder_names_keep_the_first_caches_names() -> None:
    root = Path("aah")
    assert MapSpec("labels").cache_dir(root, "query") == root / "query"
    assert MapSpec("predicted").cache_dir(root, "gallery") == root / "gallery"
    assert MapSpec("agnostic", "fast").cache_dir(root, "query") == root / "query_agnostic_fast"
    assert MapSpec("labels", "exact", "minmax").cache_dir(root, "gallery") == root / "gallery_minmax"


def test_every_training_mode_reads_one_train_cache_of_every_class() -> None:
    """One exact pass per training set: the train cache does not depend on the training targets."""
    root = Path("aah")
    for targets in ("labels", "predicted", "agnostic", "soft", "noisy"):
        spec = MapSpec(targets, "fast")
        assert spec.cache_mode("train") == "classes" and spec.split_method("train") == "exact"
        assert spec.cache_dir(root, "train") == root / "train_classes"


def test_precision_is_part_of_the_spec_and_of_the_cache_name() -> None:
    root = Path("aah")
    amp = MapSpec.from_config(load_config(None, ["train.amp=true", "eval.aah=fast"]))
    assert amp.precision == "bf16" and MapSpec.from_state({"map_spec": amp.to_dict()}) == amp
    assert amp.cache_dir(root, "query") == root / "query_agnostic_fast_bf16"
    assert amp.cache_dir(root, "train") == root / "train_classes_bf16"
    assert MapSpec().precision == "float32" and MapSpec().cache_dir(root, "query") == root / "query_agnostic"
    # checkpoints whose map_spec predates the field: the precision their config trained in
    old = {"map_spec": {"targets": "agnostic", "method": "fast", "normalize": "max"}}
    assert MapSpec.from_state(old).precision == "float32"
    assert MapSpec.from_state({**old, "config": {"train": {"amp": True}}}).precision == "bf16"
    with pytest.raises(ConfigError, match="heat-map precision 'fp8' is not one of: float32, bf16"):
        MapSpec(precision="fp8")


def test_one_default_the_configs() -> None:
    assert MapSpec() == MapSpec.from_config(load_config(None, []))
    assert MapSpec().targets == "agnostic"


def test_test_time_maps_never_follow_labels_and_training_maps_are_exact() -> None:
    for targets, test_mode in (("labels", "predicted"), ("predicted", "predicted"), ("agnostic", "agnostic")):
        spec = MapSpec(targets, "fast")
        assert spec.mode("train") == targets and spec.mode("query") == spec.mode("gallery") == test_mode
        assert spec.split_method("train") == "exact" and spec.split_method("query") == "fast"
    assert MapSpec("labels").with_method("fast") == MapSpec("labels", "fast")
    assert MapSpec("labels").with_method(None) == MapSpec("labels")


def test_bad_values_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="heat-map targets 'label' is not one of"):
        MapSpec("label")
    with pytest.raises(ConfigError, match="heat-map method"):
        MapSpec("labels", "approximate")
    with pytest.raises(ValueError, match="split must be one of"):
        MapSpec().mode("val")


def test_targets_carry_labels_exactly_when_label_guided() -> None:
    Targets("labels", np.zeros((2, 3), dtype=np.int64))
    Targets("predicted")
    with pytest.raises(ValueError, match="only they take labels"):
        Targets("predicted", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="need their"):
        Targets("labels")


def test_the_typed_choices_equal_the_one_list_of_allowed_values() -> None:
    from sangal import choices
    from sangal.aah import spec

    assert spec.TRAIN_TARGETS == choices.TRAIN_TARGETS and spec.MAP_METHODS == choices.MAP_METHODS
