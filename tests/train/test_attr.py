"""Attribute-net training set: the train split plus the labelled identities of extra sets."""

from __future__ import annotations

import numpy as np
import pytest

from sangal.config import load_config
from sangal.data import setup
from sangal.errors import SangalError
from sangal.train.attr import attribute_training_set
from sangal.train.engine import Stopped


def test_extra_roots_add_every_labelled_identity(tiny_synth, tiny_overrides, tmp_path) -> None:
    from sangal.synthetic.generate import generate_synthetic

    other = generate_synthetic(tmp_path / "other", num_ids=6, num_cams=2, seed=5, height=64, width=32)
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path / "out") + [f"attr_train.extra_roots=[{other}]"])
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    records, targets, identities = attribute_training_set(cfg, dataset, table)
    extra_cfg = load_config(None, tiny_overrides(other, tmp_path / "x"))
    extra = setup.load_reid_dataset(extra_cfg)
    labelled = [r for r in list(extra.query) + list(extra.gallery) if r.raw_pid > 0]
    assert len(records) == len(dataset.train) + len(extra.train) + len(labelled)
    assert targets.shape == (len(records), len(table.schema)) and identities.shape == (len(records),)
    # one code per person: the main set's train ids, then the extra set's train and test ids, never merged
    assert len(np.unique(identities)) == len({r.raw_pid for r in dataset.train}) + len(
        {r.raw_pid for r in extra.train}) + len({r.raw_pid for r in labelled})
    # the extra set's rows carry its own labels, looked up in its own .mat
    extra_table = setup.load_attributes(extra_cfg, extra)
    np.testing.assert_array_equal(targets[len(dataset.train):len(dataset.train) + len(extra.train)],
                                  setup.attribute_targets(extra_table, extra.train, "train"))


def test_a_missing_extra_root_names_it(tiny_synth, tiny_overrides, tmp_path) -> None:
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path / "out") + [f"attr_train.extra_roots=[{tmp_path}/nope]"])
    dataset = setup.load_reid_dataset(cfg)
    with pytest.raises(SangalError, match="nope"):
        attribute_training_set(cfg, dataset, setup.load_attributes(cfg, dataset))


def test_the_attribute_net_has_its_own_backbone_and_weights(tiny_synth, tiny_overrides, tmp_path) -> None:
    """model.attr_backbone / model.attr_pretrained build the attribute net; the Re-ID settings stay as they are."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    from sangal.store.checkpoint import load_checkpoint
    from sangal.train.attr import train_attribute_net

    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in torchvision.models.mobilenet_v2(weights=None).state_dict().items()}
    weights = tmp_path / "mobilenet_v2.safetensors"
    save_file(state, str(weights))
    overrides = [*tiny_overrides(tiny_synth, tmp_path / "out"), "model.attr_backbone=mobilenet_v2",
                 f"model.attr_pretrained={weights}", "attr_train.lr=0", "attr_train.weight_decay=0",
                 "attr_train.max_steps_per_epoch=1"]
    cfg = load_config(None, overrides)
    assert (cfg.model.backbone, cfg.model.pretrained) == ("resnet18", "false")
    train_attribute_net(cfg)
    ckpt = load_checkpoint(tmp_path / "out" / "attr" / "checkpoints" / "final")
    assert ckpt.arch["backbone"] == "mobilenet_v2"
    key = "features.14.conv.1.0.weight"  # a conv weight: lr 0 keeps the file's values
    assert torch.equal(ckpt.weights[f"backbone.{key}"], state[key])


@pytest.mark.slow
def test_a_stopped_attribute_net_resumes_to_the_bit(tiny_synth, tiny_overrides, tmp_path) -> None:
    """On the one loop: stopped mid-epoch, resumed, the attribute net ends with the uninterrupted run's weights."""
    import json

    import torch
    from safetensors.torch import load_file

    from sangal.train.attr import train_attribute_net

    extra = ["attr_train.epochs=2", "attr_train.batch_size=6", "attr_train.optimizer=adam", "attr_train.lr=1e-3"]
    train_attribute_net(load_config(None, tiny_overrides(tiny_synth, tmp_path / "full") + extra))
    split = load_config(None, tiny_overrides(tiny_synth, tmp_path / "split") + extra)
    with pytest.raises(Stopped):
        train_attribute_net(split, stop_after_steps=3)
    state = json.loads((tmp_path / "split/attr/checkpoints/last/state.json").read_text())
    assert state["global_step"] == 3 and not (tmp_path / "split/attr/checkpoints/final").exists()
    train_attribute_net(split, resume=True)
    a = load_file(tmp_path / "full/attr/checkpoints/final/model.safetensors")
    b = load_file(tmp_path / "split/attr/checkpoints/final/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_identities_measure_the_confusion_noisy_maps_draw_from(tiny_synth, tiny_overrides, tmp_path) -> None:
    from sangal.store.checkpoint import load_checkpoint
    from sangal.train.attr import confusion_matrices, hold_out, train_attribute_net

    identities = np.repeat(np.arange(10), 3)
    held = hold_out(identities, 0.3, seed=0)
    assert held.sum() == 9 and len(np.unique(identities[held])) == 3  # whole identities, never part of one
    assert np.array_equal(held, hold_out(identities, 0.3, seed=0)) and not hold_out(identities, 0.0, 0).any()
    pred = np.array([[0], [1], [1], [1], [0]])
    truth = np.array([[0], [0], [1], [1], [-1]])
    (matrix,) = confusion_matrices(pred, truth, [2], prior=0.0)
    assert matrix == [[0.5, 0.5], [0.0, 1.0]]  # the unlabelled row is skipped
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path) + ["attr_train.holdout=0.25"])
    train_attribute_net(cfg)
    state = load_checkpoint(tmp_path / "attr/checkpoints/final", expected_kind="attribute").state
    matrices = state["confusion"]["matrices"]
    assert len(matrices) == 27 and state["confusion"]["images"] > 0
    assert all(abs(sum(row) - 1.0) < 1e-9 for m in matrices for row in m)


def test_balanced_loss_weights_come_from_the_training_labels_and_are_recorded(tiny_synth, tiny_overrides,
                                                                             tmp_path) -> None:
    import math

    from sangal.store.checkpoint import load_checkpoint
    from sangal.train.attr import train_attribute_net
    from sangal.train.losses import class_ratios

    cfg = load_config(None, [*tiny_overrides(tiny_synth, tmp_path / "out"), "attr_train.loss=balanced",
                             "attr_train.max_steps_per_epoch=1"])
    train_attribute_net(cfg)
    record = load_checkpoint(tmp_path / "out" / "attr" / "checkpoints" / "final").state["attr_loss"]
    dataset = setup.load_reid_dataset(cfg)
    table = setup.load_attributes(cfg, dataset)
    ratios = class_ratios(attribute_training_set(cfg, dataset, table)[1], table.schema.num_classes)
    assert record["loss"] == "balanced" and len(record["class_ratios"]) == len(table.schema)
    assert record["class_ratios"] == [r.tolist() for r in ratios]
    assert all(w == pytest.approx(math.exp(1 - r), rel=1e-6)
               for ws, rs in zip(record["class_weights"], record["class_ratios"]) for w, r in zip(ws, rs))
