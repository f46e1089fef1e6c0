"""Where a command may write: an output is never one of its inputs (links followed), never inside an input folder,
never a folder holding an input, and its place is writable; the one writer turns a failed write into one line."""

from __future__ import annotations

import os

import pytest

from sangal.errors import OutputError
from sangal.store.files import atomic_file, atomic_write_text
from sangal.store.outputs import check_output


def test_an_output_that_reaches_an_input_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "link.bin").symlink_to(ckpt / "model.safetensors")
    with pytest.raises(OutputError, match=r"link.bin is --checkpoint .*model.safetensors, an input of this command"):
        check_output(tmp_path / "link.bin", {"--checkpoint": ckpt / "model.safetensors"}, "--out")
    with pytest.raises(OutputError, match=r"lies inside --checkpoint"):
        check_output(ckpt / "model.safetensors", {"--checkpoint": ckpt}, "--out")
    with pytest.raises(OutputError, match=r"holds --checkpoint .*which writing the folder would replace"):
        check_output(tmp_path, {"--checkpoint": ckpt}, "--out", folder=True)
    assert check_output(tmp_path / "e.onnx", {"--checkpoint": ckpt, "unused": None}) == tmp_path / "e.onnx"
    assert check_output(tmp_path / "sibling", {"--checkpoint": ckpt}, folder=True) == tmp_path / "sibling"


def test_an_output_whose_place_cannot_be_written_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"file/a/b.html cannot be written: .*file is a file, not a folder"):
        check_output(tmp_path / "file" / "a" / "b.html", flag="--html")
    with pytest.raises(OutputError, match=r"is a folder; name a file"):
        check_output(tmp_path, flag="--out")
    with pytest.raises(OutputError, match=r"is a file; name a folder"):
        check_output(tmp_path / "file", flag="--out", folder=True)
    # root ignores permission bits, so a read-only folder is what os.access says for an ordinary user
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=rf"folder {tmp_path} is read-only for this user"):
        check_output(tmp_path / "new.html", flag="--html")


def test_a_failed_write_is_one_line_and_leaves_the_old_file_and_no_temp(tmp_path):
    (tmp_path / "taken").mkdir()  # renaming a file over a folder fails, root or not
    with pytest.raises(OutputError, match=r"taken: cannot be written \(Is a directory\); choose another output"):
        atomic_write_text(tmp_path / "taken", "page")
    atomic_write_text(tmp_path / "page.html", "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "page.html") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert (tmp_path / "page.html").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "page.html", "taken"]


def test_the_next_write_removes_only_temp_files_whose_writer_is_gone(tmp_path):
    import subprocess
    import sys

    from sangal.store.files import _writer_tag

    host = _writer_tag().split("@", 1)[1]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = tmp_path / f".e.onnx.tmp-{dead.pid}@{host}-0123abcd"  # a writer killed before its rename
        kept = tmp_path / f".e.onnx.tmp-{live.pid}@{host}-0123abce"  # a writer still at work
        gone.write_bytes(b"half")
        kept.write_bytes(b"half")
        atomic_write_text(tmp_path / "e.onnx", "new")
        assert not gone.exists() and kept.exists() and (tmp_path / "e.onnx").read_text() == "new"
    finally:
        live.kill()
        live.wait()
