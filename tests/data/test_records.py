"""Shared folder-reading logic: name parsing, image listing, relabelling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from sangal.data.records import DatasetLayout, ImageRecord, ReIDDataset, list_images, parse_name, read_split
from sangal.errors import DatasetError

LAYOUT = DatasetLayout(name="toy", pattern=re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)"), name_example="0001_c1.jpg",
                       max_camera=3)


def test_parse_name_junk_and_camera() -> None:
    assert parse_name(Path("-1_c3.jpg"), LAYOUT) == (-1, 2)
    assert parse_name(Path("0012_c1.png"), LAYOUT) == (12, 0)
    with pytest.raises(DatasetError, match="camera c0"):
        parse_name(Path("0012_c0.jpg"), LAYOUT)
    with pytest.raises(DatasetError, match="-2_c1.jpg"):
        parse_name(Path("-2_c1.jpg"), LAYOUT)


def test_list_images_ignores_non_images(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "c.jpeg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.jpeg"]


def test_relabel_sorted_and_distractors_dropped_from_train(tmp_path: Path) -> None:
    for name in ("0030_c1.jpg", "0004_c2.jpg", "0030_c3.jpg", "0000_c1.jpg", "-1_c1.jpg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    train = read_split(tmp_path, LAYOUT, relabel=True)
    assert sorted((r.raw_pid, r.pid) for r in train) == [(4, 0), (30, 1), (30, 1)]
    test = read_split(tmp_path, LAYOUT, relabel=False)
    assert sorted(r.pid for r in test) == [0, 4, 30, 30]


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "-1_c1.jpg")
    with pytest.raises(DatasetError, match=f"{re.escape(str(tmp_path))}: no usable toy images"):
        read_split(tmp_path, LAYOUT, relabel=False)


def test_split_accessor_rejects_unknown() -> None:
    r = ImageRecord(Path("x.jpg"), 0, 0, 5)
    ds = ReIDDataset("toy", Path("."), [r], [r], [r], 1)
    assert ds.split("query") == [r]
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("val")
