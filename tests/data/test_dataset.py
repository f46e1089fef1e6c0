"""ImageDataset items, per-sample seeded augmentation, image reading and checking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sangal.data import ImageDataset, ImageRecord, build_transforms, check_images, read_image
from sangal.errors import DatasetError


def _records(tmp_path: Path, n: int = 3) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp_path / f"{i:04d}_c1s1_000001_01.jpg"
        Image.fromarray(rng.integers(0, 255, (24, 12, 3), dtype=np.uint8)).save(path)
        out.append(ImageRecord(path=path, pid=i, camid=i % 2, raw_pid=i + 10))
    return out


def test_item_fields(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    attrs = np.array([[0, 1], [1, -1], [3, 0]])
    ds = ImageDataset(recs, build_transforms(16, 8, train=False), attributes=attrs)
    item = ds[2]
    assert len(ds) == 3
    assert item["image"].shape == (3, 16, 8) and item["image"].dtype == torch.float32
    assert (item["pid"], item["camid"], item["index"], item["path"]) == (2, 0, 2, str(recs[2].path))
    assert item["attrs"].dtype == torch.long and item["attrs"].tolist() == [3, 0]
    assert "attrs" not in ImageDataset(recs, build_transforms(16, 8, train=False))[0]


def test_seeded_item_is_deterministic_and_leaves_global_rng(tmp_path: Path) -> None:
    ds = ImageDataset(_records(tmp_path), build_transforms(16, 8, train=True, pad=2, erasing_p=0.5))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = ds[(1, 42)]["image"]
    assert torch.equal(torch.random.get_rng_state(), before)  # forked RNG: global state untouched
    torch.manual_seed(999)  # a different global state must not matter
    b = ds[(1, 42)]["image"]
    assert torch.equal(a, b)
    outs = [ds[(1, s)]["image"] for s in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # seeds do change augmentation
    assert ds[(1, 42)]["index"] == 1


def test_attributes_shape_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="N=3"):
        ImageDataset(_records(tmp_path), build_transforms(16, 8, train=False), attributes=np.zeros((2, 4)))


def test_read_image_errors_name_file(tmp_path: Path) -> None:
    bad = tmp_path / "0001_c1s1_000001_01.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DatasetError, match="0001_c1s1_000001_01.jpg: unreadable"):
        read_image(bad)
    with pytest.raises(DatasetError, match="missing.jpg: image file does not exist"):
        read_image(tmp_path / "missing.jpg")
    gray = tmp_path / "g.png"
    Image.new("L", (5, 7)).save(gray)
    assert read_image(gray).mode == "RGB" and read_image(gray).size == (5, 7)


def test_check_images_reports_bad_ones(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    truncated = tmp_path / "0005_c1s1_000001_01.jpg"
    truncated.write_bytes(recs[0].path.read_bytes()[:200])
    garbage = tmp_path / "0006_c1s1_000001_01.jpg"
    garbage.write_bytes(b"not an image")
    recs += [ImageRecord(truncated, 5, 0, 5), ImageRecord(garbage, 6, 0, 6)]
    bad = check_images(recs)
    assert [p for p, _ in bad] == [truncated, garbage]
    assert all(reason for _, reason in bad)
