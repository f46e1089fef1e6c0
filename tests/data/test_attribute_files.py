"""Writing Lin et al. .mat files: every label survives write -> read in both colour modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from sangal.data import IGNORE_INDEX, get_schema, read_attribute_mat
from sangal.data.attribute_files import attribute_mat_bytes, decode_labels


@pytest.mark.parametrize("dataset", ["market1501", "dukemtmc"])
@pytest.mark.parametrize("colour_mode", ["binary", "merged"])
def test_write_then_read_is_the_identity(tmp_path: Path, dataset: str, colour_mode: str) -> None:
    schema = get_schema(dataset, colour_mode)
    rng = np.random.default_rng(3)
    labels = np.stack([rng.integers(IGNORE_INDEX, c, 6) for c in schema.num_classes], axis=1)
    ids = [2, 7, 11, 40, 1234, 10001]  # more than 4 digits still round-trips
    path = tmp_path / "a.mat"
    path.write_bytes(attribute_mat_bytes(schema, {"train": (ids, labels), "test": (ids[:2], labels[:2])}))
    table = read_attribute_mat(path, colour_mode=colour_mode)
    assert table.schema == schema
    assert np.array_equal(np.stack([table.labels["train"][i] for i in ids]), labels)
    assert list(table.labels["test"]) == ids[:2]


def test_file_values_follow_the_lin_encoding() -> None:
    schema = get_schema("market1501", "merged")
    row = np.full((1, len(schema)), IGNORE_INDEX)
    row[0, schema.index("age")] = 2  # adult
    row[0, schema.index("upper_colour")] = schema.attributes[schema.index("upper_colour")].classes.index("red")
    fields = decode_labels(row, schema)
    assert fields["age"].tolist() == [3] and fields["gender"].tolist() == [0]  # 1-based, 0 = unlabelled
    assert fields["upred"].tolist() == [2] and fields["upblack"].tolist() == [1]  # one-hot: 2 = yes, 1 = no
    assert fields["downblack"].tolist() == [0]  # unlabelled merged head -> all its colours 0


def test_struct_name_and_index_strings(tmp_path: Path) -> None:
    schema = get_schema("dukemtmc")
    (tmp_path / "d.mat").write_bytes(attribute_mat_bytes(schema, {"train": ([5], np.zeros((1, len(schema)), np.int64))}))
    mat = scipy.io.loadmat(tmp_path / "d.mat")
    assert "duke_attribute" in mat
    assert str(mat["duke_attribute"]["train"][0, 0]["image_index"][0, 0][0, 0][0]) == "0005"
