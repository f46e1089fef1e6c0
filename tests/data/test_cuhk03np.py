"""CUHK03-NP reader on a tiny cuhk03-np tree (detected/ and labeled/, Market layout, .png names)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sangal.data import load_dataset
from sangal.errors import DatasetError

SPLITS = {"bounding_box_train": ["0001_c1_1.png", "0001_c2_2.png", "0004_c1_1.png", "0004_c2_3.png"],
          "query": ["0002_c1_1.png", "0003_c2_1.png"],
          "bounding_box_test": ["0002_c2_2.png", "0003_c1_4.png", "0003_c2_5.png"]}


def make_cuhk03np(root: Path) -> Path:
    for variant, extra in (("detected", []), ("labeled", ["0005_c1_1.png"])):
        for folder, names in SPLITS.items():
            for name in names + (extra if folder == "bounding_box_train" else []):
                path = root / "cuhk03-np" / variant / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 16), (200, 10, 10)).save(path)
    return root / "cuhk03-np"


@pytest.mark.parametrize("name, train_ids", [("cuhk03np_detected", 2), ("cuhk03np_labeled", 3)])
@pytest.mark.parametrize("level", ["parent", "cuhk03-np", "variant"])
def test_reads_each_variant_from_any_level(tmp_path: Path, name: str, train_ids: int, level: str) -> None:
    top = make_cuhk03np(tmp_path)
    root = {"parent": tmp_path, "cuhk03-np": top, "variant": top / name.split("_")[1]}[level]
    ds = load_dataset(name, root)
    assert ds.name == name and ds.root == top / name.split("_")[1]
    assert ds.num_train_pids == train_ids and len(ds.query) == 2 and len(ds.gallery) == 3
    assert {r.path.name: r.camid for r in ds.gallery} == {"0002_c2_2.png": 1, "0003_c1_4.png": 0, "0003_c2_5.png": 1}


def test_camera_outside_the_pair_is_an_error(tmp_path: Path) -> None:
    top = make_cuhk03np(tmp_path)
    Image.new("RGB", (8, 16)).save(top / "detected" / "query" / "0002_c3_1.png")
    with pytest.raises(DatasetError, match=r"0002_c3_1.png: camera c3 .* outside cuhk03np_detected's cameras \(1..2\)"):
        load_dataset("cuhk03np_detected", top)
