"""Image checks at load time: both on_bad_image policies, the size+mtime cache, relabelling after a skip."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image

from sangal.data import load_dataset, verify
from sangal.errors import DatasetError


def make_set(root: Path) -> Path:
    """Folder dataset: train ids 1, 2, 3 (id 2 has a single image), query/gallery id 7."""
    names = {"train": ["1/a_c1.jpg", "1/b_c2.jpg", "2/c_c1.jpg", "3/d_c1.jpg", "3/e_c2.jpg"],
             "query": ["7/q_c1.jpg"], "gallery": ["7/g_c2.jpg", "7/h_c1.jpg"]}
    for split, files in names.items():
        for name in files:
            (root / split / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 32), (90, 90, 200)).save(root / split / name)
    return root


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])  # truncated JPEG: the header opens, the decode fails


def test_error_policy_is_one_line_naming_the_first_bad_file_and_the_count(tmp_path: Path) -> None:
    root = make_set(tmp_path)
    corrupt(root / "train/2/c_c1.jpg")
    (root / "gallery/7/h_c1.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError) as info:
        load_dataset("folder", root, on_bad_image="error")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{root / 'train/2/c_c1.jpg'}: unreadable or corrupt image")
    assert "2 of 8 images are bad" in message and "data.on_bad_image=skip" in message


def test_skip_policy_drops_relabels_and_writes_the_list(tmp_path: Path, caplog) -> None:
    root = make_set(tmp_path / "set")
    corrupt(root / "train/2/c_c1.jpg")
    (root / "gallery/7/h_c1.jpg").write_bytes(b"")
    listing = tmp_path / "run" / "bad_images.txt"
    with caplog.at_level("WARNING"):
        ds = load_dataset("folder", root, on_bad_image="skip", bad_list=listing)
    assert (len(ds.train), len(ds.gallery)) == (4, 1)
    # id 2 lost its only image: the remaining train ids are relabelled 0..N-1
    assert {r.raw_pid: r.pid for r in ds.train} == {1: 0, 3: 1} and ds.num_train_pids == 2
    lines = listing.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(root / "train/2/c_c1.jpg"), str(root / "gallery/7/h_c1.jpg")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "skipped 2 of 8 images" in warnings[0] and str(listing) in warnings[0]
    assert [p for p, _ in ds.bad_images] == [root / "train/2/c_c1.jpg", root / "gallery/7/h_c1.jpg"]


def test_a_split_left_empty_is_an_error(tmp_path: Path) -> None:
    root = make_set(tmp_path)
    corrupt(root / "query/7/q_c1.jpg")
    with pytest.raises(DatasetError, match="every query image is bad"):
        load_dataset("folder", root, on_bad_image="skip")


def test_results_are_cached_by_size_and_mtime(tmp_path: Path, monkeypatch) -> None:
    root = make_set(tmp_path)
    calls: list[str] = []
    real = verify.image_problem
    monkeypatch.setattr(verify, "image_problem", lambda p: calls.append(p) or real(p))
    load_dataset("folder", root, on_bad_image="error")
    assert len(calls) == 8
    calls.clear()
    load_dataset("folder", root, on_bad_image="error")
    assert calls == []  # nothing changed: nothing decoded
    corrupt(root / "train/1/b_c2.jpg")  # new size and mtime -> checked again, found bad
    with pytest.raises(DatasetError, match="b_c2.jpg"):
        load_dataset("folder", root, on_bad_image="error")
    assert calls == [str((root / "train/1/b_c2.jpg").resolve())]
    caches = list((Path(os.environ["SANGAL_CACHE_DIR"]) / "image-checks").glob("folder-train-*.json"))
    assert caches and not list(caches[0].parent.glob(".*"))  # written by rename: no temp file left


def test_missing_file_is_reported_without_a_cache_entry(tmp_path: Path) -> None:
    good = tmp_path / "a.jpg"
    Image.new("RGB", (4, 4)).save(good)
    bad = verify.check_paths([good, tmp_path / "gone.jpg"], num_workers=2, cache=tmp_path / "c.json")
    assert bad == [(tmp_path / "gone.jpg", "image file does not exist")]


def test_progress_bar_only_past_the_threshold(tmp_path: Path, monkeypatch, capsys) -> None:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4)).save(paths[-1])
    verify.check_paths(paths[:2], num_workers=1)
    assert "checking images" not in capsys.readouterr().err
    monkeypatch.setattr(verify, "PROGRESS_THRESHOLD", 3)
    verify.check_paths(paths, num_workers=1)
    assert "checking images" in capsys.readouterr().err


def test_sha256_is_cached_by_stat_and_a_change_that_restores_the_mtime_is_seen(tmp_path: Path, monkeypatch) -> None:
    from sangal.errors import CheckpointError

    path = tmp_path / "weights.bin"
    path.write_bytes(b"0123456789" * 1000)
    good = verify.file_sha256(path)
    verify.verify_sha256(path, good, CheckpointError, "fetch it again")
    hashed = []
    monkeypatch.setattr(verify, "file_sha256", lambda p: hashed.append(p) or good)
    verify.verify_sha256(path, good, CheckpointError, "fetch it again")
    assert hashed == []  # unchanged file: the cached digest
    monkeypatch.undo()
    time.sleep(0.02)  # file timestamps tick in jiffies (a few ms): let the change get a later ctime
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: the ctime still moved
    with pytest.raises(CheckpointError, match=r"weights\.bin: sha256 .* differs from the .* recorded .*; fetch it again"):
        verify.verify_sha256(path, good, CheckpointError, "fetch it again")
    path.unlink()
    with pytest.raises(CheckpointError, match=r"weights\.bin is missing; fetch it again"):
        verify.verify_sha256(path, good, CheckpointError, "fetch it again")
