"""Hostile input through the real CLI: the eleven defects of issue 18 and the cases that already behaved.

Every case runs ``sangal.cli.main`` in-process on tiny synthetic data (random-weight resnet18 at 64x32)
and asserts the exit code, that a refusal is one ``error:`` line on stderr naming the file (or the key),
that no traceback escapes, and that nothing the case points at was changed or lost. Case ids are
``<class>/<case>``, so ``pytest -v`` shows the count per class.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import play, refused
from sangal.cli import main
from sangal.config import load_config
from sangal.data.attributes import get_schema
from sangal.models import ReIDNet
from sangal.store.checkpoint import save_checkpoint
from sangal.store.files import _writer_tag, file_sha256, seal_json
from sangal.train.engine import Stopped

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 64, 32
CASES = []


def case(klass: str, slow: bool = False):
    """Register a case of class ``klass``: a function (world, tmp_path, capsys, request) -> None; ``slow``: it
    trains or starts a process (marked ``slow``: under xdist this file starts early)."""
    def register(fn):
        CASES.append(pytest.param(fn, id=f"{klass}/{fn.__name__}", marks=[pytest.mark.slow] if slow else []))
        return fn
    return register


# ----------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_synth, tiny_overrides):
    """A Re-ID checkpoint (id+attr, random weights, with optimizer state), a gallery and its index."""
    tmp = tmp_path_factory.mktemp("robust")
    torch.manual_seed(0)
    schema = get_schema("market1501")
    model = ReIDNet(4, schema.num_classes, mode="id+attr", backbone="resnet18", pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(2, 3, H, W)).features.sum().backward()
    optimizer.step()
    arch = {**model.arch_dict(), "dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}
    ckpt = save_checkpoint(tmp / "ckpt", model.eval(), arch, {"step": 1}, optimizer=optimizer)
    gallery = tmp / "gallery"
    shutil.copytree(tiny_synth / "bounding_box_test", gallery)
    assert main(["index", str(gallery), "--checkpoint", str(ckpt), "--out", str(tmp / "index")]) == 0
    return {"tmp": tmp, "root": tiny_synth, "ckpt": ckpt, "gallery": gallery, "index": tmp / "index",
            "query": sorted((tiny_synth / "query").glob("*.jpg"))[0],
            "over": lambda out: tiny_overrides(tiny_synth, out)}


@pytest.fixture(scope="module")
def interrupted(world, tmp_path_factory):
    """The output folder of an id run stopped (and checkpointed) after 2 of its 4 steps (2 epochs x 2 batches)."""
    from sangal.train.reid import train_reid

    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(Stopped):
        train_reid(load_config(None, world["over"](out) + ["model.mode=id"]), stop_after_steps=2)
    return out


@pytest.mark.parametrize("play_case", CASES)
def test_hostile_input(play_case, world, tmp_path, capsys, request):
    play_case(world, tmp_path, capsys, request)


# ----------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (links not followed): what "nothing changed" compares."""
    found = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        found.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return found


def copy_index(world, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world["index"], tmp_path / "index"))


def flip(path: Path, offsets) -> None:
    data = bytearray(path.read_bytes())
    for i in offsets:
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def reseal(index: Path, edit) -> None:
    """Edit meta.json and seal it again, as a hand edit that also fixes the hash (or an index without one) would."""
    meta = json.loads((index / "meta.json").read_text())
    meta.pop("document_sha256")
    edit(meta)
    (index / "meta.json").write_text(json.dumps(seal_json(meta)))


def search(capsys, world, index: Path, *extra):
    return play(capsys, "search", world["query"], "--index", index, *extra)


# ----------------------------------------------------------------------------- 1. index paths stay in the gallery


def _outside_secret(tmp_path: Path, world) -> Path:
    secret = tmp_path / "secret" / "private.jpg"
    secret.parent.mkdir()
    shutil.copy(world["query"], secret)
    return secret


@case("1 index paths escape the gallery")
def dotdot_path_in_meta(world, tmp_path, capsys, request):
    index, secret = copy_index(world, tmp_path), _outside_secret(tmp_path, world)
    rel = os.path.relpath(secret, world["gallery"])  # ../<...>/secret/private.jpg
    reseal(index, lambda m: m["paths"].__setitem__(0, rel))
    before = snapshot(index, secret.parent)
    refused(search(capsys, world, index, "-k", "40", "--html", tmp_path / "out.html"), index / "meta.json",
            "paths[0]", "private.jpg")
    assert not (tmp_path / "out.html").exists() and snapshot(index, secret.parent) == before


@case("1 index paths escape the gallery")
def absolute_path_in_meta(world, tmp_path, capsys, request):
    index, secret = copy_index(world, tmp_path), _outside_secret(tmp_path, world)
    reseal(index, lambda m: m["paths"].__setitem__(1, str(secret)))
    refused(search(capsys, world, index, "-k", "40", "--html", tmp_path / "out.html"), index / "meta.json",
            "paths[1]")
    assert not (tmp_path / "out.html").exists()


@case("1 index paths escape the gallery")
def symlink_out_of_the_gallery_at_search(world, tmp_path, capsys, request):
    gallery = Path(shutil.copytree(world["gallery"], tmp_path / "gallery"))
    index = tmp_path / "index"
    assert play(capsys, "index", gallery, "--checkpoint", world["ckpt"], "--out", index)[0] == 0
    secret = _outside_secret(tmp_path, world)
    victim = sorted(gallery.glob("*.jpg"))[0]
    victim.unlink()
    victim.symlink_to(secret)  # swapped in after indexing
    refused(search(capsys, world, index, "-k", "1000", "--html", tmp_path / "out.html"), index / "meta.json",
            victim.name, "symbolic link")
    assert not (tmp_path / "out.html").exists()


@case("1 index paths escape the gallery")
def symlink_out_of_the_gallery_at_index(world, tmp_path, capsys, request):
    gallery = Path(shutil.copytree(world["gallery"], tmp_path / "gallery"))
    (gallery / "zz_link.jpg").symlink_to(_outside_secret(tmp_path, world))
    code, _, err = play(capsys, "index", gallery, "--checkpoint", world["ckpt"], "--out", tmp_path / "index")
    assert code == 0 and "error" not in err
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert "zz_link.jpg" not in meta["paths"]
    assert {"path": "zz_link.jpg", "reason": "a symbolic link to a file outside the gallery"} \
        in meta["skipped"]


# ----------------------------------------------------------------------------- 2. checkpoint hashes


def _copy_ckpt(world, tmp_path: Path) -> Path:
    return Path(shutil.copytree(world["ckpt"], tmp_path / "ckpt"))


def _evaluate(capsys, world, ckpt: Path, tmp_path: Path):
    # the world's checkpoint is id+attr: its mode, not the tiny runs' san-gal
    return play(capsys, "evaluate", "--checkpoint", ckpt, *world["over"](tmp_path / "out"), "model.mode=id+attr")


@case("2 checkpoint hash never checked")
def two_flipped_bytes_in_the_model(world, tmp_path, capsys, request):
    ckpt = _copy_ckpt(world, tmp_path)
    size = (ckpt / "model.safetensors").stat().st_size
    flip(ckpt / "model.safetensors", [size // 2, size // 2 + 1])
    before = snapshot(ckpt)
    line = refused(_evaluate(capsys, world, ckpt, tmp_path), ckpt / "model.safetensors", "restore the checkpoint")
    assert "sha256" in line and snapshot(ckpt) == before


@case("2 checkpoint hash never checked")
def flipped_byte_in_the_optimizer_state(world, tmp_path, capsys, request):
    ckpt = _copy_ckpt(world, tmp_path)
    flip(ckpt / "optimizer.safetensors", [-5])
    refused(_evaluate(capsys, world, ckpt, tmp_path), ckpt / "optimizer.safetensors")


@case("2 checkpoint hash never checked")
def edited_state_json(world, tmp_path, capsys, request):
    ckpt = _copy_ckpt(world, tmp_path)
    doc = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**doc, "step": 7}))
    refused(_evaluate(capsys, world, ckpt, tmp_path), ckpt / "state.json", "does not match")


@case("2 checkpoint hash never checked")
def truncated_model(world, tmp_path, capsys, request):
    ckpt = _copy_ckpt(world, tmp_path)
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:1000])
    refused(_evaluate(capsys, world, ckpt, tmp_path), ckpt / "model.safetensors")


# ----------------------------------------------------------------------------- 3. corrupt index


@case("3 corrupted index searched silently")
def every_997th_byte_of_the_features_flipped(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    size = (index / "features.npy").stat().st_size
    flip(index / "features.npy", range(200, size, 997))
    before = snapshot(index)
    refused(search(capsys, world, index), index / "features.npy", "sha256", "rebuild the index")
    assert snapshot(index) == before


@case("3 corrupted index searched silently")
def nan_row_with_a_matching_hash(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    feats = np.load(index / "features.npy")
    feats[3] = np.nan
    np.save(index / "features.npy", feats)
    reseal(index, lambda m: m["files"].__setitem__("features.npy", file_sha256(index / "features.npy")))
    refused(search(capsys, world, index), index / "features.npy", "not finite unit vectors", "row 3")


@case("3 corrupted index searched silently")
def features_that_are_not_unit_vectors(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    feats = np.load(index / "features.npy") * 40.0  # norms of 40 instead of 1: every distance would be 0
    np.save(index / "features.npy", feats)
    reseal(index, lambda m: m.pop("files"))  # an index without recorded hashes
    refused(search(capsys, world, index), index / "features.npy", "not finite unit vectors")


@case("3 corrupted index searched silently")
def features_of_another_shape(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    np.save(index / "features.npy", np.load(index / "features.npy")[:-1])
    reseal(index, lambda m: m.pop("files"))
    refused(search(capsys, world, index), index / "features.npy", "does not fit")


# ----------------------------------------------------------------------------- 4. help


@case("4 --help crashes")
def program_help(world, tmp_path, capsys, request):
    code, out, _ = play(capsys, "--help")
    assert code == 0 and out.startswith("usage: sangal") and "95% CIs" in out


@case("4 --help crashes")
def study_help(world, tmp_path, capsys, request):
    code, out, _ = play(capsys, "study", "--help")
    assert code == 0 and out.startswith("usage: sangal study") and "--seeds" in out


# ----------------------------------------------------------------------------- 5. truncated attributes.npz


@case("5 truncated attributes.npz")
def truncated_attributes(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    data = (index / "attributes.npz").read_bytes()
    (index / "attributes.npz").write_bytes(data[: len(data) // 2])
    refused(search(capsys, world, index), index / "attributes.npz", "sha256")


@case("5 truncated attributes.npz")
def truncated_attributes_without_a_recorded_hash(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    data = (index / "attributes.npz").read_bytes()
    (index / "attributes.npz").write_bytes(data[: len(data) // 2])
    reseal(index, lambda m: m.pop("files"))
    refused(search(capsys, world, index), index / "attributes.npz", "unreadable attributes")


# ----------------------------------------------------------------------------- 6. config ranges


@case("6 out-of-range config accepted")
def negative_epochs(world, tmp_path, capsys, request):
    refused(play(capsys, "train", "--mode", "id", *world["over"](tmp_path / "out"), "train.epochs=-2"),
            "train.epochs=-2", "must be in [1, 10000]")
    assert not (tmp_path / "out").exists()


@case("6 out-of-range config accepted")
def two_wrong_values_two_lines(world, tmp_path, capsys, request):
    code, _, err = play(capsys, "train", "--mode", "id", *world["over"](tmp_path / "out"), "data.flip=2",
                        "optim.momentum=-0.5")
    assert code == 2 and err.splitlines() == ["error: data.flip=2.0 is out of range: must be in [0, 1]",
                                              "error: optim.momentum=-0.5 is out of range: must be in [0, 1)"]


# ----------------------------------------------------------------------------- 7. finished runs are not clobbered


def _fake_run(run: Path, *names: str) -> Path:
    for name in names:
        (run / "checkpoints" / name).mkdir(parents=True)
        (run / "checkpoints" / name / "model.safetensors").write_bytes(b"the old model")
    return run


@case("7 training overwrites a finished run")
def train_into_a_finished_run(world, tmp_path, capsys, request):
    run = _fake_run(tmp_path / "out" / "reid" / "id", "last", "final")
    before = snapshot(run)
    refused(play(capsys, "train", "--mode", "id", *world["over"](tmp_path / "out")), run, "finished run",
            "--overwrite")
    assert snapshot(run) == before


@case("7 training overwrites a finished run")
def train_attr_into_a_finished_run(world, tmp_path, capsys, request):
    run = _fake_run(tmp_path / "out" / "attr", "last", "final")
    before = snapshot(run)
    refused(play(capsys, "train-attr", *world["over"](tmp_path / "out")), run, "finished run")
    assert snapshot(run) == before


@case("7 training overwrites a finished run")
def train_into_an_interrupted_run_without_resume(world, tmp_path, capsys, request):
    run = _fake_run(tmp_path / "out" / "reid" / "id", "last")
    before = snapshot(run)
    refused(play(capsys, "train", "--mode", "id", *world["over"](tmp_path / "out")), run, "--resume")
    assert snapshot(run) == before


@case("7 training overwrites a finished run", slow=True)
def overwrite_replaces_a_finished_run(world, tmp_path, capsys, request):
    run = _fake_run(tmp_path / "out" / "reid" / "id", "last", "final")
    code, out, _ = play(capsys, "train", "--mode", "id", "--overwrite", *world["over"](tmp_path / "out"))
    assert code == 0 and "re-id: rank1" in out
    assert (run / "checkpoints" / "final" / "model.safetensors").read_bytes() != b"the old model"


# ----------------------------------------------------------------------------- 8. resume with another config


def _copy_run(request, tmp_path: Path, capsys) -> tuple[Path, Path]:
    out = Path(shutil.copytree(request.getfixturevalue("interrupted"), tmp_path / "out"))
    capsys.readouterr()  # the first use trains it: its progress bars are not this case's output
    return out, out / "reid" / "id" / "checkpoints" / "last"


def _resume_refused(world, tmp_path, capsys, request, change: str) -> None:
    out, last = _copy_run(request, tmp_path, capsys)
    before = snapshot(out)
    refused(play(capsys, "train", "--mode", "id", "--resume", *world["over"](out), change), last,
            change.split("=")[0], "another config")
    assert snapshot(out) == before


@case("8 resume with a changed config", slow=True)
def resume_with_another_batch_size(world, tmp_path, capsys, request):
    _resume_refused(world, tmp_path, capsys, request, "data.p=3")


@case("8 resume with a changed config")
def resume_with_another_seed(world, tmp_path, capsys, request):
    _resume_refused(world, tmp_path, capsys, request, "train.seed=7")


@case("8 resume with a changed config")
def resume_and_overwrite_together(world, tmp_path, capsys, request):
    out, _ = _copy_run(request, tmp_path, capsys)
    before = snapshot(out)
    refused(play(capsys, "train", "--mode", "id", "--resume", "--overwrite", *world["over"](out)), "--overwrite",
            "--resume")
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- 9. control codes in file names


@case("9 control codes reach the terminal")
def escape_sequences_in_a_gallery_file_name(world, tmp_path, capsys, request):
    gallery = Path(shutil.copytree(world["gallery"], tmp_path / "gallery"))
    evil = "\x1b]0;pwned\x07\x1b[2Jclear.jpg"
    shutil.copy(world["query"], gallery / evil)  # the query's own image: it ranks first
    assert play(capsys, "index", gallery, "--checkpoint", world["ckpt"], "--out", tmp_path / "index")[0] == 0
    code, out, err = search(capsys, world, tmp_path / "index", "-k", "3")
    assert code == 0 and "\\x1b]0;pwned\\x07\\x1b[2Jclear.jpg" in out
    assert not any(c in out + err for c in "\x1b\x07")


@case("9 control codes reach the terminal")
def escape_sequences_in_a_missing_query_name(world, tmp_path, capsys, request):
    query = tmp_path / "\x1b[2J\x1b]0;pwned\x07q.jpg"
    line = refused(play(capsys, "search", query, "--index", world["index"]), "\\x1b[2J\\x1b]0;pwned\\x07q.jpg")
    assert "\x1b" not in line and "\x07" not in line


# ----------------------------------------------------------------------------- 10. concurrent index writers

HOLD = """
import sys, time
from pathlib import Path
from sangal.store.files import output_lock
with output_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


@case("10 two index runs collide", slow=True)
def a_second_writer_stops_with_one_line(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(index)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        its_temp = tmp_path / f".index.tmp-{first.pid}@{_writer_tag().split('@', 1)[1]}-0badc0de"
        its_temp.mkdir()
        (its_temp / "features.npy").write_bytes(b"half written")
        before = snapshot(index, its_temp)
        refused(play(capsys, "index", world["gallery"], "--checkpoint", world["ckpt"], "--out", index),
                index, f"pid {first.pid} on")
        assert snapshot(index, its_temp) == before  # neither the index nor the first writer's temp folder touched
    finally:
        first.kill()
        first.wait()
    assert play(capsys, "index", world["gallery"], "--checkpoint", world["ckpt"], "--out", index)[0] == 0
    assert not its_temp.exists()  # its writer is gone now: cleaned up


# ----------------------------------------------------------------------------- 11. killed swap


@case("11 killed swap hides the old index")
def kill_between_the_two_renames(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    before = snapshot(index)
    index.rename(tmp_path / ".index.old-1234abcd")
    code, out, _ = search(capsys, world, index, "-k", "3")
    assert code == 0 and len(out.splitlines()) == 4 and snapshot(index) == before


@case("11 killed swap hides the old index")
def kill_between_the_renames_of_a_checkpoint(world, tmp_path, capsys, request):
    ckpt = _copy_ckpt(world, tmp_path)
    before = snapshot(ckpt)
    ckpt.rename(tmp_path / ".ckpt.old-1234abcd")
    code, out, _ = _evaluate(capsys, world, ckpt, tmp_path)
    assert code == 0 and "re-id: rank1" in out and snapshot(ckpt) == before


# ----------------------------------------------------------------------------- classes that already behaved


@case("ok bad dataset layout")
def dataset_root_missing(world, tmp_path, capsys, request):
    missing = tmp_path / "nowhere"
    refused(play(capsys, "train-attr", *world["over"](tmp_path / "out"), f"data.root={missing}"), missing)


@case("ok bad dataset layout")
def dataset_root_without_the_layout(world, tmp_path, capsys, request):
    junk = tmp_path / "junk"
    (junk / "photos").mkdir(parents=True)
    (junk / "photos" / "holiday.jpg").write_bytes(b"x")
    refused(play(capsys, "train-attr", *world["over"](tmp_path / "out"), f"data.root={junk}"), junk)


@case("ok bad config")
def unknown_key(world, tmp_path, capsys, request):
    refused(play(capsys, "config", "show", "optim.lrr=1"), "optim.lrr")


@case("ok bad config")
def yaml_that_does_not_parse(world, tmp_path, capsys, request):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    refused(play(capsys, "config", "show", "-c", bad), bad)


@case("ok bad .mat")
def attribute_file_that_is_not_a_mat(world, tmp_path, capsys, request):
    bad = tmp_path / "market_attribute.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, but not really")
    refused(play(capsys, "train-attr", *world["over"](tmp_path / "out"), f"data.attributes={bad}"), bad)


def _bomb(path: Path) -> Path:
    """A PNG whose header claims 20000 x 20000 pixels (the data is 8 x 8)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, 20000, 20000)  # IHDR width, height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # its CRC
    path.write_bytes(bytes(data))
    return path


@case("ok decompression bomb")
def bomb_as_query(world, tmp_path, capsys, request):
    bomb = _bomb(tmp_path / "bomb.png")
    refused(play(capsys, "search", bomb, "--index", world["index"]), bomb, "decompression bomb")


@case("ok corrupt image")
def truncated_query(world, tmp_path, capsys, request):
    query = tmp_path / "q.jpg"
    query.write_bytes(world["query"].read_bytes()[:200])
    refused(play(capsys, "search", query, "--index", world["index"]), query, "unreadable or corrupt image")


@case("ok corrupt image")
def corrupt_dataset_image(world, tmp_path, capsys, request):
    root = Path(shutil.copytree(world["root"], tmp_path / "data"))
    bad = sorted((root / "query").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    refused(play(capsys, "train-attr", *world["over"](tmp_path / "out"), f"data.root={root}"), bad,
            "data.on_bad_image=skip")


@case("ok kill during training resumes", slow=True)
def resume_after_a_kill_with_other_workers_and_logging(world, tmp_path, capsys, request):
    out, last = _copy_run(request, tmp_path, capsys)
    code, printed, _ = play(capsys, "train", "--mode", "id", "--resume", *world["over"](out), "train.log_every=5",
                            "data.num_workers=0", "train.device=cpu")
    final = json.loads((last.parent / "final" / "state.json").read_text())
    assert code == 0 and "re-id: rank1" in printed and (final["epoch"], final["global_step"]) == (2, 4)  # 2 x 2 steps


@case("ok killed index leaves the old one")
def kill_while_the_new_index_is_written(world, tmp_path, capsys, request):
    index = copy_index(world, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    temp = tmp_path / f".index.tmp-{dead}@{_writer_tag().split('@', 1)[1]}-deadbeef"
    temp.mkdir()
    (temp / "features.npy").write_bytes(b"\x93NUMPY half")  # killed half-way through the new index
    before = snapshot(index)
    expected = search(capsys, world, world["index"], "-k", "5")[1]  # the same gallery: the same printed paths
    code, out, _ = search(capsys, world, index, "-k", "5")
    assert code == 0 and out == expected and snapshot(index) == before
    assert play(capsys, "index", world["gallery"], "--checkpoint", world["ckpt"], "--out", index)[0] == 0
    assert not temp.exists()
