"""Attribute schemas and the Lin et al. .mat reader, on the real files and on hand-made broken ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from sangal.data import IGNORE_INDEX, ImageRecord, get_schema, read_attribute_mat
from sangal.data.attributes import REGIONS
from sangal.errors import AttributeFileError

ATTR_DIR = Path("/work/shared/data/attributes")
MARKET = ATTR_DIR / "market_attribute.mat"
DUKE = ATTR_DIR / "duke_attribute.mat"
needs_files = pytest.mark.skipif(not MARKET.is_file() or not DUKE.is_file(), reason="Lin et al. files not present")


def test_schema_shapes_and_classes() -> None:
    m, d = get_schema("market1501"), get_schema("dukemtmc")
    assert len(m) == 27 and len(d) == 23
    assert m.attributes[m.index("age")].classes == ("young", "teenager", "adult", "old")
    assert m.num_classes.count(4) == 1 and set(m.num_classes) == {2, 4}
    assert m.attributes[m.index("up")].classes == ("long sleeve", "short sleeve")
    assert m.attributes[m.index("clothes")].classes == ("dress", "pants")
    assert d.attributes[d.index("shoes")].classes == ("dark", "light")
    assert d.attributes[d.index("top")].classes == ("short", "long")
    assert get_schema("synthetic") == m
    assert all(a.region in REGIONS for a in m.attributes + d.attributes)
    regions = {a.name: a.region for a in m.attributes}
    assert (regions["hair"], regions["up"], regions["clothes"], regions["downblue"], regions["age"]) == (
        "hair", "upper", "lower", "lower", "body")
    assert {a.name: a.region for a in d.attributes}["boots"] == "shoes"


def test_merged_schema() -> None:
    m = get_schema("market1501", "merged")
    assert m.names[-2:] == ["upper_colour", "lower_colour"] and len(m) == 12
    assert m.attributes[-2].classes == ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
    assert m.attributes[-1].num_classes == 9
    d = get_schema("dukemtmc", "merged")
    assert len(d) == 10 and d.num_classes[-2:] == [8, 7]
    with pytest.raises(AttributeFileError, match="colour_mode"):
        get_schema("market1501", "rgb")
    with pytest.raises(AttributeFileError, match="cuhk03"):
        get_schema("cuhk03")


@needs_files
def test_real_market_binary() -> None:
    t = read_attribute_mat(MARKET)
    assert t.schema.dataset == "market1501"
    assert len(t.labels["train"]) == 751 and len(t.labels["test"]) == 750
    assert t.raw_ids["train"][0] == 2 and t.raw_ids["test"][0] == 1
    row = t.lookup("train", 2)
    assert row.shape == (27,) and row.dtype == np.int64
    # raw file values are 1-based: labels are raw - 1, read by field name
    for name in ("age", "gender", "upred", "downblue"):
        k = t.schema.index(name)
        assert row[k] == int(t.raw["train"][name][0]) - 1
    ages = np.stack(list(t.labels["train"].values()))[:, t.schema.index("age")]
    assert set(ages.tolist()) == {0, 1, 2, 3}
    assert (np.stack(list(t.labels["test"].values())) != IGNORE_INDEX).all()


@needs_files
def test_real_market_merged_irregularities() -> None:
    t = read_attribute_mat(MARKET, colour_mode="merged")
    up, low = t.schema.index("upper_colour"), t.schema.index("lower_colour")
    for split, n_up, n_low in (("train", 78, 30), ("test", 69, 44)):
        labels = np.stack(list(t.labels[split].values()))
        assert (labels[:, up] == IGNORE_INDEX).sum() == n_up
        assert (labels[:, low] == IGNORE_INDEX).sum() == n_low
    # id 0002 (train): upred and downblue are "yes"
    row = t.lookup("train", 2)
    assert t.schema.attributes[up].classes[row[up]] == "red"
    assert t.schema.attributes[low].classes[row[low]] == "blue"


@needs_files
def test_real_duke() -> None:
    t = read_attribute_mat(DUKE)
    assert t.schema.dataset == "dukemtmc" and len(t.schema) == 23
    assert len(t.labels["train"]) == 702 and len(t.labels["test"]) == 1110
    top = t.schema.index("top")
    assert t.lookup("train", 370)[top] == IGNORE_INDEX and t.lookup("train", 679)[top] == IGNORE_INDEX
    train = np.stack(list(t.labels["train"].values()))
    assert (train == IGNORE_INDEX).sum() == 2  # only those two entries
    merged = read_attribute_mat(DUKE, colour_mode="merged")
    low = merged.schema.index("lower_colour")
    test = np.stack(list(merged.labels["test"].values()))
    raw_low = np.stack([merged.raw["test"]["down" + c] == 2 for c in merged.schema.attributes[low].classes], axis=1)
    assert np.bincount(raw_low.sum(axis=1))[2:].tolist() == [22, 1]  # README: 22 ids with two, 1 with three
    assert (test[:, low] == IGNORE_INDEX).sum() == (raw_low.sum(axis=1) != 1).sum()
    assert (test[:, merged.schema.index("upper_colour")] == IGNORE_INDEX).sum() == 14


def _save(path: Path, train: dict, test: dict, struct: str = "market_attribute") -> Path:
    scipy.io.savemat(str(path), {struct: {"train": train, "test": test}})
    return path


def _split_from_real(table, split: str, order: list[str]) -> dict:
    ids = table.raw_ids[split]
    out: dict = {name: table.raw[split][name].reshape(1, -1) for name in order}
    out["image_index"] = np.array([f"{i:04d}" for i in ids], dtype=object).reshape(1, -1)
    return out


@needs_files
def test_field_order_independent(tmp_path: Path) -> None:
    real = read_attribute_mat(MARKET)
    names = list(real.raw["train"])
    shuffled = _save(tmp_path / "m.mat", _split_from_real(real, "train", names[::-1]),
                     _split_from_real(real, "test", sorted(names)))
    again = read_attribute_mat(shuffled)
    for split in ("train", "test"):
        assert set(again.labels[split]) == set(real.labels[split])
        for pid, row in real.labels[split].items():
            np.testing.assert_array_equal(again.labels[split][pid], row)


def _tiny(values: dict | None = None, ids: tuple[str, ...] = ("0001", "0002")) -> dict:
    fields = {name: np.ones((1, len(ids)), np.uint8) for name in get_schema("market1501").names}
    fields.update(values or {})
    fields["image_index"] = np.array(ids, dtype=object).reshape(1, -1)
    return fields


def test_missing_field_named(tmp_path: Path) -> None:
    train = _tiny()
    del train["hat"]
    with pytest.raises(AttributeFileError, match=r"m\.mat \(train\): missing attribute field 'hat'"):
        read_attribute_mat(_save(tmp_path / "m.mat", train, _tiny()))


def test_length_mismatch_named(tmp_path: Path) -> None:
    bad = _tiny({"gender": np.ones((1, 3), np.uint8)})
    with pytest.raises(AttributeFileError, match=r"\(test\): field 'gender' has 3 .* for 2 identities"):
        read_attribute_mat(_save(tmp_path / "m.mat", _tiny(), bad))


def test_out_of_range_value_names_field_and_id(tmp_path: Path) -> None:
    bad = _tiny({"hair": np.array([[1, 3]], np.uint8)})
    with pytest.raises(AttributeFileError, match=r"field 'hair' has value 3 for identity 0002"):
        read_attribute_mat(_save(tmp_path / "m.mat", bad, _tiny()))


def test_missing_split_and_struct(tmp_path: Path) -> None:
    path = tmp_path / "m.mat"
    scipy.io.savemat(str(path), {"market_attribute": {"train": _tiny()}})
    with pytest.raises(AttributeFileError, match=r"m\.mat: missing split struct 'test'"):
        read_attribute_mat(path)
    scipy.io.savemat(str(path), {"labels": np.ones(3)})
    with pytest.raises(AttributeFileError, match=r"no 'market_attribute' or 'duke_attribute' struct.*labels"):
        read_attribute_mat(path)
    _save(path, _tiny(), _tiny())
    with pytest.raises(AttributeFileError, match=r"no 'duke_attribute' struct"):
        read_attribute_mat(path, dataset="dukemtmc")


def test_not_a_mat_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.mat"
    path.write_text("hello")
    with pytest.raises(AttributeFileError, match=r"labels\.mat: not a readable MATLAB"):
        read_attribute_mat(path)
    with pytest.raises(AttributeFileError, match="does not exist"):
        read_attribute_mat(tmp_path / "absent.mat")


def test_lookup_and_labels_for(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.mat", _tiny({"gender": np.array([[1, 2]], np.uint8)}), _tiny(ids=("0003",)))
    table = read_attribute_mat(path, dataset="synthetic")
    g = table.schema.index("gender")
    assert table.lookup("train", 2)[g] == 1
    with pytest.raises(AttributeFileError, match=r"m\.mat: identity 0042 is not in the train split"):
        table.lookup("train", 42)
    recs = [ImageRecord(Path(f"{p}.jpg"), p, 0, p) for p in (3, 0, 3)]
    labels = table.labels_for(recs, "gallery")
    assert labels.shape == (3, 27) and (labels[1] == IGNORE_INDEX).all() and (labels[0] == 0).all()
    with pytest.raises(AttributeFileError, match=r"1 identities .* query .*: 0009"):
        table.labels_for([ImageRecord(Path("x.jpg"), 9, 0, 9)], "query")


def test_unlabelled_zero_becomes_ignore(tmp_path: Path) -> None:
    train = _tiny({"upblack": np.array([[2, 0]], np.uint8), "upwhite": np.array([[1, 2]], np.uint8)})
    path = _save(tmp_path / "m.mat", train, _tiny())
    binary = read_attribute_mat(path)
    assert binary.lookup("train", 2)[binary.schema.index("upblack")] == IGNORE_INDEX
    merged = read_attribute_mat(path, colour_mode="merged")
    up = merged.schema.index("upper_colour")
    assert merged.lookup("train", 1)[up] == 0  # black
    assert merged.lookup("train", 2)[up] == IGNORE_INDEX  # white marked but black unknown
