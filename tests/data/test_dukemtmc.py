"""DukeMTMC-reID reader: file-name parsing, 8 cameras, parent folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sangal.data import load_dataset
from sangal.data.dukemtmc import DUKEMTMC_LAYOUT
from sangal.data.records import parse_name
from sangal.errors import DatasetError


def _write(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 16), (10, 20, 30)).save(folder / name)


def test_parse_duke_names() -> None:
    assert parse_name(Path("0005_c2_f0046985.jpg"), DUKEMTMC_LAYOUT) == (5, 1)
    assert parse_name(Path("7140_c8_f0012345.jpg"), DUKEMTMC_LAYOUT) == (7140, 7)


@pytest.mark.parametrize("name", ["0002_c1s1_000451_03.jpg", "0005_c9_f0046985.jpg", "0005_f0046985.jpg"])
def test_non_duke_names_rejected(name: str) -> None:
    with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
        parse_name(Path(name), DUKEMTMC_LAYOUT)


def test_duke_from_parent(tmp_path: Path) -> None:
    root = tmp_path / "DukeMTMC-reID"
    _write(root / "bounding_box_train", ["0001_c2_f0046182.jpg", "0001_c5_f0051231.jpg", "0008_c3_f0000001.jpg"])
    _write(root / "query", ["0005_c2_f0046985.jpg"])
    _write(root / "bounding_box_test", ["0005_c8_f0046999.jpg", "0002_c1_f0044158.jpg"])
    ds = load_dataset("dukemtmc", tmp_path)
    assert ds.root == root and ds.name == "dukemtmc"
    assert [(r.pid, r.raw_pid, r.camid) for r in ds.train] == [(0, 1, 1), (0, 1, 4), (1, 8, 2)]
    assert {r.camid for r in ds.gallery} == {0, 7}
    assert ds.num_train_pids == 2
