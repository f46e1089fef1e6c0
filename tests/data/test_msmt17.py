"""MSMT17 reader on tiny V1/V2 folders written in the real list-file format."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sangal.data import load_dataset
from sangal.data.msmt17 import read_msmt17
from sangal.errors import DatasetError

# list file -> lines "<id folder>/<name> <id>"; the third "_" field is the camera
LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_07_0303noon_0020_1.jpg 0",
                       "0001/0001_000_15_0303afternoon_0001_0.jpg 1"],
    "list_val.txt": ["0002/0002_000_03_0303morning_0100_0.jpg 2"],
    "list_query.txt": ["0000/0000_000_02_0113morning_0001_0.jpg 0"],
    "list_gallery.txt": ["0000/0000_001_05_0113noon_0002_0.jpg 0", "0001/0001_000_02_0113noon_0003_0.jpg 1"],
}


def make_msmt17(root: Path, version: str = "MSMT17_V1") -> Path:
    folder = root / version
    train_dir, test_dir = ("train", "test") if version == "MSMT17_V1" else ("mask_train_v2", "mask_test_v2")
    for name, lines in LISTS.items():
        image_dir = folder / (train_dir if name in ("list_train.txt", "list_val.txt") else test_dir)
        for line in lines:
            path = image_dir / line.split()[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16), (30, 60, 90)).save(path)
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_reads_both_versions_from_the_parent_folder(tmp_path: Path, version: str) -> None:
    make_msmt17(tmp_path, version)
    ds = load_dataset("msmt17", tmp_path, on_bad_image="error")
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (4, 1, 2)  # train = list_train + list_val
    assert ds.num_train_pids == 3 and sorted({r.pid for r in ds.train}) == [0, 1, 2]
    # list ids start at 0 (a real identity): raw_pid = id + 1 keeps 0 for distractors
    assert sorted({r.raw_pid for r in ds.train}) == [1, 2, 3]
    assert {r.path.name: r.camid for r in ds.train}["0001_000_15_0303afternoon_0001_0.jpg"] == 14
    assert [r.camid for r in ds.gallery] == [4, 1] and [r.pid for r in ds.gallery] == [1, 2]
    assert all(r.path.is_file() for r in ds.train + ds.query + ds.gallery)


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    folder = make_msmt17(tmp_path)
    (folder / "list_query.txt").write_text("0000/0000_000_02_0113morning_0001_0.jpg 0\nbroken-line\n")
    with pytest.raises(DatasetError, match=r"list_query.txt:2: expected '<image path> <id>'"):
        read_msmt17(folder)
    (folder / "list_query.txt").write_text("0000/0000_000_99_x_0001_0.jpg 0\n")
    with pytest.raises(DatasetError, match=r"list_query.txt:1: no camera 01..15"):
        read_msmt17(folder)


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no list_train.txt"):
        read_msmt17(tmp_path)
    folder = make_msmt17(tmp_path)
    (folder / "list_gallery.txt").unlink()
    with pytest.raises(DatasetError, match="list_gallery.txt: MSMT17 list file is missing"):
        read_msmt17(folder)
