"""Attribute pseudo-labels: aggregation, the .mat/CSV round trips, and training on the labels."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sangal.config import load_config
from sangal.data import IGNORE_INDEX, load_dataset, read_attribute_mat
from sangal.experiments.label import aggregate, label_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def labelled(tiny_synth, tiny_overrides, tmp_path_factory):
    """An attribute net trained for one epoch on the tiny set, and its pseudo-labels of that set."""
    from sangal.train.attr import train_attribute_net

    out = tmp_path_factory.mktemp("label") / "run"
    train_attribute_net(load_config(None, tiny_overrides(tiny_synth, out)))
    ckpt = out / "attr" / "checkpoints" / "final"
    cfg = load_config(None, tiny_overrides(tiny_synth, out))
    summary = label_dataset(cfg, ckpt, out=out / "labels", compare=tiny_synth / "market_attribute.mat")
    return {"out": out, "ckpt": ckpt, "labels": out / "labels", "summary": summary}


def test_aggregate_takes_the_argmax_of_mean_probabilities() -> None:
    probs = [np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]]),
             np.array([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.5, 0.4, 0.1]])]
    ids, labels, conf, counts = aggregate(probs, np.array([7, 7, 3, 3]), min_confidence=0.6)
    assert ids.tolist() == [3, 7] and counts.tolist() == [2, 2]
    # id 3: head 0 mean [0.45, 0.55] -> 1 (conf 0.55 < 0.6: unlabelled); head 1 mean [0.5, 0.4, 0.1] -> 0
    # id 7: head 0 mean [0.55, 0.45] -> 0 (0.55, unlabelled); head 1 -> 2 (0.7)
    np.testing.assert_allclose(conf, [[0.55, 0.5], [0.55, 0.7]])
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 2]]
    assert aggregate(probs, np.array([7, 7, 3, 3]))[1].tolist() == [[1, 0], [0, 2]]


def test_mat_round_trip_covers_every_identity(labelled, tiny_synth) -> None:
    ds = load_dataset("synthetic", tiny_synth)
    table = read_attribute_mat(labelled["labels"] / "attributes.mat")
    assert set(table.labels["train"]) == {r.raw_pid for r in ds.train}
    assert set(table.labels["test"]) == {r.raw_pid for r in ds.query + ds.gallery} - {0}
    with open(labelled["labels"] / "identities.csv") as handle:
        rows = list(csv.DictReader(handle))
    schema = table.schema
    for row in rows:  # the .mat holds exactly the labels of identities.csv
        got = table.labels[row["split"]][int(row["pid"])]
        want = [schema.attributes[k].classes.index(row[name]) for k, name in enumerate(schema.names)]
        assert got.tolist() == want
        assert all(0.0 < float(row[f"{n}_confidence"]) <= 1.0 for n in schema.names)
    images = list(csv.DictReader(open(labelled["labels"] / "images.csv")))
    assert len(images) == len(ds.train) + sum(r.raw_pid > 0 for r in ds.query + ds.gallery)


def test_csv_round_trip_reads_the_same_labels(labelled) -> None:
    ds = load_dataset("csv", labelled["labels"] / "dataset.csv")
    mat = read_attribute_mat(labelled["labels"] / "attributes.mat")
    assert ds.attributes is not None and ds.attributes.schema == mat.schema
    for split in ("train", "test"):
        assert ds.attributes.labels[split].keys() == mat.labels[split].keys()
        for pid, row in mat.labels[split].items():
            assert ds.attributes.labels[split][pid].tolist() == row.tolist()


def test_comparison_with_true_labels(labelled) -> None:
    compare = labelled["summary"]["compare"]
    assert 0.0 <= compare["image_mA"] <= 1.0 and 0.0 <= compare["identity_mA"] <= 1.0
    assert len(compare["per_attribute_mA"]) == 27
    assert labelled["summary"]["identities"]["train"] == 4  # tiny set: 8 ids, half train


def test_min_confidence_leaves_identities_unlabelled(labelled, tiny_synth, tiny_overrides) -> None:
    cfg = load_config(None, tiny_overrides(tiny_synth, labelled["out"]))
    out = labelled["out"] / "strict"
    summary = label_dataset(cfg, labelled["ckpt"], out=out, min_confidence=1.0)  # the most [0, 1] allows
    table = read_attribute_mat(out / "attributes.mat")
    assert all((row == IGNORE_INDEX).all() for row in table.labels["train"].values())
    assert summary["train_unlabelled"] == 4 * 27


def test_pseudo_labels_train_id_attr(labelled, tiny_synth, tiny_overrides, tmp_path) -> None:
    from sangal.train.reid import train_reid

    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path / "run") + [
        "model.mode=id+attr", f"data.attributes={labelled['labels'] / 'attributes.mat'}", "train.epochs=1"])
    metrics = train_reid(cfg)
    assert "reid_attr_mA" in metrics and np.isfinite(metrics["mAP"])


def test_label_command(labelled, tiny_synth, tiny_overrides, tmp_path, capsys) -> None:
    from sangal.cli import main

    out = tmp_path / "cli-labels"
    over = tiny_overrides(tiny_synth, tmp_path / "run")
    assert main(["label", over[0], "--checkpoint", str(labelled["ckpt"]), *over[1:], "--out", str(out),
                 "--compare", str(tiny_synth / "market_attribute.mat")]) == 0
    printed = capsys.readouterr().out
    assert "labelled 4 train and 4 test identities" in printed and "pseudo-label mA vs" in printed
    assert (out / "attributes.mat").is_file() and (out / "summary.json").is_file()


def test_schema_mismatch_is_refused(labelled, tiny_synth, tiny_overrides) -> None:
    from sangal.errors import ConfigError

    cfg = load_config(None, tiny_overrides(tiny_synth, labelled["out"]) + ["data.dataset=dukemtmc"])
    with pytest.raises(ConfigError, match="predicts the market1501 attributes, but data.dataset=dukemtmc"):
        label_dataset(cfg, labelled["ckpt"], out=labelled["out"] / "never")
    assert not (labelled["out"] / "never").exists()


def test_label_reads_the_checkpoints_input_size_and_leaves_the_config_untouched(labelled, tiny_synth,
                                                                                 tiny_overrides) -> None:
    """The attribute net's input size decides how images are read; the caller's config is not changed, and a size
    the user gave that contradicts the checkpoint is refused in one line."""
    from sangal.config import to_dict
    from sangal.errors import ConfigError

    over = [o for o in tiny_overrides(tiny_synth, labelled["out"]) if not o.startswith(("data.height", "data.width"))]
    cfg = load_config(None, over)  # the default 256x128, not the checkpoint's 64x32
    before = to_dict(cfg)
    summary = label_dataset(cfg, labelled["ckpt"], out=labelled["out"] / "default-size")
    assert to_dict(cfg) == before and (cfg.data.height, cfg.data.width) == (256, 128)
    assert summary["identities"] == labelled["summary"]["identities"]
    with pytest.raises(ConfigError, match=r"data.height=256 \(the checkpoint has 64\)") as info:
        label_dataset(cfg, labelled["ckpt"], out=labelled["out"] / "refused", given={"data.height"})
    assert "\n" not in str(info.value) and str(labelled["ckpt"]) in str(info.value)
