"""Your own data: the CSV and folder formats, their attribute columns, cameras and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sangal.data import IGNORE_INDEX, get_schema, load_dataset
from sangal.data.custom import camera_of, read_csv_dataset, read_folder_dataset
from sangal.errors import DatasetError


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (10, 200, 30)).save(path)
    return path


ROWS = [("img/a1.jpg", 5, 0, "train"), ("img/a2.jpg", 5, 1, "train"), ("img/b1.jpg", 9, 0, "train"),
        ("img/q1.jpg", 12, 0, "query"), ("img/g1.jpg", 12, 1, "gallery"), ("img/g2.jpg", 0, 1, "gallery"),
        ("img/j.jpg", -1, 0, "gallery")]


def make_csv(root: Path, attrs: dict[int, str] | None = None, header_extra: str = "") -> Path:
    lines = ["path,pid,camid,split" + header_extra]
    empty = "," * (header_extra.count(",") - 1)  # a row with every attribute cell empty
    for path, pid, cam, split in ROWS:
        _img(root / path)
        lines.append(f"{path},{pid},{cam},{split}" + (f",{attrs.get(pid, empty)}" if attrs is not None else ""))
    (root / "set.csv").write_text("\n".join(lines) + "\n")
    return root / "set.csv"


def test_csv_protocol_and_relative_paths(tmp_path: Path) -> None:
    ds = load_dataset("csv", make_csv(tmp_path), on_bad_image="error")
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (3, 1, 2)  # junk dropped, distractor kept
    assert {r.raw_pid: r.pid for r in ds.train} == {5: 0, 9: 1} and ds.num_train_pids == 2
    assert ds.train[0].path == tmp_path / "img" / "a1.jpg" and ds.train[1].camid == 1
    assert ds.attributes is None


def test_csv_attribute_columns_become_an_identity_table(tmp_path: Path) -> None:
    csv_path = make_csv(tmp_path, {5: "female,yes", 9: "male,", 12: "1,no", 0: ","}, header_extra=",gender,backpack")
    table = read_csv_dataset(csv_path).attributes
    schema = get_schema("market1501")
    assert table.schema == schema
    g, b = schema.index("gender"), schema.index("backpack")
    assert table.labels["train"][5][[g, b]].tolist() == [1, 1]
    assert table.labels["train"][9][[g, b]].tolist() == [0, IGNORE_INDEX]  # empty cell = unlabelled
    assert table.labels["test"][12][[g, b]].tolist() == [1, 0]  # class index 1 = female
    assert (np.delete(table.labels["train"][5], [g, b]) == IGNORE_INDEX).all()  # columns not given
    assert 0 not in table.labels["test"]  # distractors carry no labels


def test_csv_merged_colour_columns_pick_the_merged_schema(tmp_path: Path) -> None:
    csv_path = make_csv(tmp_path, {5: "red", 9: "black", 12: "white", 0: ""}, header_extra=",upper_colour")
    table = read_csv_dataset(csv_path).attributes
    assert table.schema.colour_mode == "merged"
    assert table.labels["train"][5][table.schema.index("upper_colour")] == table.schema.attributes[
        table.schema.index("upper_colour")].classes.index("red")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("path,pid", "file,pid"), "missing column.s. path"),
    (lambda t: t.replace(",train\n", ",training\n", 1), r"set.csv:2: split must be one of train, query, gallery"),
    (lambda t: t.replace("img/a2.jpg,5,", "img/a2.jpg,five,"), r"set.csv:3: pid must be an integer, got 'five'"),
    (lambda t: t.replace("img/a2.jpg,5,1", "img/a2.jpg,5,-2"), r"set.csv:3: .*camid >= 0"),
    (lambda t: t.replace("split\n", "split,gendre\n"), "unknown column.s. gendre"),
    (lambda t: t.replace("img/b1.jpg,9,0,train", "img/b1.jpg,9,0"), r"set.csv:4: 3 fields, the header has 4"),
])
def test_csv_errors_name_file_and_line(tmp_path: Path, edit, message: str) -> None:
    csv_path = make_csv(tmp_path)
    csv_path.write_text(edit(csv_path.read_text()))
    with pytest.raises(DatasetError, match=message):
        read_csv_dataset(csv_path)


def test_csv_identity_rows_must_agree_and_values_must_be_classes(tmp_path: Path) -> None:
    csv_path = make_csv(tmp_path, {5: "female", 9: "male", 12: "male", 0: ""}, header_extra=",gender")
    text = csv_path.read_text().replace("img/a2.jpg,5,1,train,female", "img/a2.jpg,5,1,train,male")
    csv_path.write_text(text)
    with pytest.raises(DatasetError, match=r"set.csv:3: identity 5 has gender different from its row 2"):
        read_csv_dataset(csv_path)
    csv_path.write_text(text.replace("train,male", "train,tall"))
    with pytest.raises(DatasetError, match=r"set.csv:3: gender='tall' is not one of male, female"):
        read_csv_dataset(csv_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_csv_dataset(tmp_path / "nope.csv")


def make_folder(root: Path, names: dict[str, list[str]]) -> Path:
    for rel in (f"{split}/{name}" for split, files in names.items() for name in files):
        _img(root / rel)
    return root


def test_folder_cameras_from_file_names(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"train": ["0003/x_c1_1.jpg", "0003/y_c2_1.jpg", "0008/z-cam3-9.png"],
                                  "query": ["0011/q_c1.jpg"], "gallery": ["0011/g_c2.jpg", "0000/d_c1.jpg"]})
    ds = load_dataset("folder", root, on_bad_image="error")
    assert [(r.raw_pid, r.pid, r.camid) for r in ds.train] == [(3, 0, 0), (3, 0, 1), (8, 1, 2)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(0, 0), (11, 1)]  # distractor folder 0 kept


def test_folder_without_camera_tokens_is_one_camera(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"train": ["1/a.jpg", "1/b.jpg", "2/sub/c.jpg"], "query": ["3/q.jpg"],
                                  "gallery": ["3/g.jpg", "4/h.jpg"]})
    ds = read_folder_dataset(root)
    assert {r.camid for r in ds.train + ds.query + ds.gallery} == {0} and len(ds.train) == 3


def test_folder_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "a", {"train": ["1/a_c1.jpg", "1/b.jpg"], "query": ["3/q_c1.jpg"],
                                        "gallery": ["3/g_c2.jpg"]})
    with pytest.raises(DatasetError, match=r"b.jpg: no camera token"):
        read_folder_dataset(root)
    root = make_folder(tmp_path / "b", {"train": ["bob/a.jpg"], "query": ["3/q.jpg"], "gallery": ["3/g.jpg"]})
    with pytest.raises(DatasetError, match=r"bob: identity folder name must be an integer"):
        read_folder_dataset(root)
    root = make_folder(tmp_path / "c", {"train": ["1/a.jpg"], "query": ["3/q.jpg"]})
    with pytest.raises(DatasetError, match=r"missing split folder.s. gallery"):
        read_folder_dataset(root)


@pytest.mark.parametrize("name, camid", [("0001_c2_f77.jpg", 1), ("cam3-0004.png", 2), ("C1.jpg", 0),
                                         ("disc4_x.jpg", None), ("c12abc.jpg", None), ("a_cam10.jpg", 9)])
def test_camera_token(name: str, camid: int | None) -> None:
    assert camera_of(name) == camid
