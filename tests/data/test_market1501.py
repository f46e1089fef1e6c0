"""Market-1501 reader on a hand-built tiny folder: protocol counts, parent folder, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sangal.data import load_dataset
from sangal.data.market1501 import read_market1501
from sangal.errors import DatasetError

TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c1s1_000551_01.jpg", "0002_c2s1_000301_01.jpg",
         "0007_c3s1_000101_01.jpg", "0007_c6s2_000201_02.jpg", "0010_c4s1_001001_01.jpg"]
QUERY = ["0001_c1s1_001051_00.jpg", "0003_c2s1_000151_00.jpg"]
GALLERY = ["0001_c1s1_001151_01.jpg",  # same id, same camera as its query
           "0001_c5s1_001251_01.jpg", "0003_c4s1_000551_01.jpg",
           "0000_c1s1_000151_01.jpg", "0000_c6s1_000151_02.jpg",  # distractors (kept)
           "-1_c1s1_000401_03.jpg", "-1_c3s1_000402_03.jpg"]  # junk (dropped)


def _write(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 16), (i * 20 % 256, 80, 160)).save(folder / name)


def make_market(root: Path) -> Path:
    """A tiny Market-1501 folder with junk, distractors, Thumbs.db and same-camera pairs."""
    _write(root / "bounding_box_train", TRAIN)
    _write(root / "query", QUERY)
    _write(root / "bounding_box_test", GALLERY)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    (root / "gt_bbox").mkdir()
    return root


def test_protocol_counts(tmp_path: Path) -> None:
    ds = read_market1501(make_market(tmp_path / "Market-1501-v15.09.15"))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 2, 5)
    assert ds.num_train_pids == 3
    assert sorted({r.pid for r in ds.train}) == [0, 1, 2]
    assert {r.raw_pid: r.pid for r in ds.train} == {2: 0, 7: 1, 10: 2}
    assert -1 not in {r.pid for r in ds.gallery}
    assert sum(r.pid == 0 for r in ds.gallery) == 2  # distractors kept
    assert all(r.pid == r.raw_pid for r in ds.query + ds.gallery)
    cams = {r.path.name: r.camid for r in ds.train}
    assert cams["0002_c1s1_000451_03.jpg"] == 0 and cams["0007_c6s2_000201_02.jpg"] == 5
    # the same-camera gallery image of query 0001 is still in the gallery (evaluation excludes it)
    assert any(r.pid == 1 and r.camid == 0 for r in ds.gallery)


def test_summary_one_line_per_split(tmp_path: Path) -> None:
    ds = read_market1501(make_market(tmp_path / "m"))
    lines = ds.summary().splitlines()
    assert lines[0].split() == ["train", "|", "3", "ids", "|", "6", "images", "|", "5", "cameras"]
    assert lines[1].split()[:6] == ["query", "|", "2", "ids", "|", "2"]
    assert lines[2].split()[:6] == ["gallery", "|", "3", "ids", "|", "5"]  # 0001, 0003 and distractor 0


def test_parent_folder_accepted(tmp_path: Path) -> None:
    make_market(tmp_path / "Market-1501-v15.09.15")
    (tmp_path / "unrelated").mkdir()
    ds = load_dataset("market1501", tmp_path)
    assert ds.root == tmp_path / "Market-1501-v15.09.15"
    assert len(ds.train) == 6


def test_synthetic_uses_market_layout(tmp_path: Path) -> None:
    ds = load_dataset("synthetic", make_market(tmp_path / "synth"))
    assert ds.name == "synthetic" and len(ds.gallery) == 5


def test_several_candidates_listed(tmp_path: Path) -> None:
    make_market(tmp_path / "a")
    make_market(tmp_path / "b")
    with pytest.raises(DatasetError, match=r"several subfolders.*a, b"):
        load_dataset("market1501", tmp_path)


def test_missing_split_names_folder_and_lists_found(tmp_path: Path) -> None:
    root = make_market(tmp_path / "Market")
    for f in (root / "query").iterdir():
        f.unlink()
    (root / "query").rmdir()
    with pytest.raises(DatasetError) as err:
        load_dataset("market1501", root)
    msg = str(err.value)
    assert str(root) in msg and "missing" in msg and "query" in msg
    assert "bounding_box_test/" in msg and "gt_bbox/" in msg  # what was found


def test_no_dataset_anywhere(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match="no market1501 split folders"):
        load_dataset("market1501", tmp_path)


def test_root_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("market1501", tmp_path / "nope")


def test_bad_file_name_names_the_file(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    _write(root / "bounding_box_train", ["person_12.jpg"])
    with pytest.raises(DatasetError, match=r"person_12\.jpg.*0002_c1s1_000451_03\.jpg"):
        read_market1501(root)


def test_camera_out_of_range(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    _write(root / "query", ["0001_c7s1_001051_00.jpg"])
    with pytest.raises(DatasetError, match=r"0001_c7s1_001051_00\.jpg.*camera c7"):
        read_market1501(root)


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="market1501, dukemtmc, synthetic"):
        load_dataset("cuhk03", tmp_path)
