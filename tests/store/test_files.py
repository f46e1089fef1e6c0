"""Durable storage primitives: one writer per output, temp folders of live writers kept, sealed JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sangal.errors import BusyError, CacheError
from sangal.store import files as storage

HOLD = """
import sys, time
from pathlib import Path
from sangal.store.files import output_lock
with output_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of ``tmp_path / "out"`` until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_first(tmp_path, holder):
    with pytest.raises(BusyError) as err:
        with storage.output_lock(tmp_path / "out", wait=False):
            pass
    assert str(tmp_path / "out") in str(err.value) and f"pid {holder.pid} on " in str(err.value)
    holder.kill()
    holder.wait()  # the kernel releases a killed holder's lock
    with storage.output_lock(tmp_path / "out", wait=False):
        with storage.output_lock(tmp_path / "out", wait=False):  # re-entrant within a thread
            pass
    assert not (tmp_path / ".out.lock").exists()  # removed on release


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staged_dir_removes_only_temp_folders_whose_writer_is_gone(tmp_path):
    host = storage._writer_tag().split("@", 1)[1]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = tmp_path / f".out.tmp-{live.pid}@{host}-0123abcd"
        other_host = tmp_path / f".out.tmp-{_dead_pid()}@elsewhere.example-0123abce"
        gone = tmp_path / f".out.tmp-{_dead_pid()}@{host}-0123abcf"
        legacy = tmp_path / ".out.tmp-deadbeef"  # written before temp folders named their writer
        for d in (kept, other_host, gone, legacy):
            d.mkdir()
        with storage.staged_dir(tmp_path / "out") as tmp:
            assert f"{os.getpid()}@{host}" in tmp.name
            (tmp / "x").write_text("new")
        assert kept.is_dir() and other_host.is_dir() and not gone.exists() and not legacy.exists()
        assert (tmp_path / "out" / "x").read_text() == "new"
    finally:
        live.kill()
        live.wait()


def test_recover_aside_restores_a_directory_a_killed_swap_left_aside(tmp_path):
    (tmp_path / ".out.old-12345678").mkdir()
    (tmp_path / ".out.old-12345678" / "x").write_text("old")
    storage.recover_aside(tmp_path / "out")
    assert (tmp_path / "out" / "x").read_text() == "old" and not (tmp_path / ".out.lock").exists()


def test_a_sealed_document_round_trips_and_an_edit_is_refused(tmp_path):
    doc = storage.seal_json({"b": [1, 2.5, None], "a": {"3": "x"}, "n": (1, 2)})
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc, indent=1))
    read = json.loads(path.read_text())
    assert storage.check_seal(read, path, CacheError, "fix it") == {"b": [1, 2.5, None], "a": {"3": "x"}, "n": [1, 2]}
    read["b"][1] = 2.6
    with pytest.raises(CacheError, match=r"doc\.json: its content does not match .*; fix it"):
        storage.check_seal(read, path, CacheError, "fix it")
    assert storage.check_seal({"unsealed": 1}, path, CacheError, "fix it") == {"unsealed": 1}
