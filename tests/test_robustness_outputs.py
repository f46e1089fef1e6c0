"""Outputs that never destroy inputs, artefacts that are checked, and unwritable places (issue 29: cases 1, 2, 6,
11 and 20; the server's cases 4, 5, 16 and 17 are in tests/serve/test_trust.py).

Every case runs ``sangal.cli.main`` in-process on tiny synthetic data (random-weight resnet18 at 64x32) and
asserts the exit code, that a refusal is one ``error:`` line naming the file, that no traceback escapes, and that
what the case points at is unchanged. An unwritable place is an output whose parent is a regular file: that
fails for root too, which ignores permission bits.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from sangal.aah.fast_map_files import FAST_MAP_NET_FILE, FAST_MAP_NET_RECORD, save_fast_map_net
from cli_helpers import play, refused
from sangal.cli import main
from sangal.data.attributes import get_schema
from sangal.models import ReIDNet
from sangal.models.attribute_net import AttributeNet
from sangal.models.fast_map_net import FastMapNet
from sangal.store.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 64, 32
EXTRA = {"dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_synth, tiny_overrides):
    """An id+attr checkpoint, a gallery and its index; an attribute checkpoint with a map predictor and the san-gal
    checkpoint trained with it (random weights)."""
    tmp = tmp_path_factory.mktemp("outputs")
    torch.manual_seed(0)
    classes = get_schema("market1501").num_classes
    model = ReIDNet(4, classes, mode="id+attr", backbone="resnet18", pretrained=False).eval()
    ckpt = save_checkpoint(tmp / "ckpt", model, {**model.arch_dict(), **EXTRA}, {"step": 1})
    attr = AttributeNet(classes, backbone="resnet18", pretrained=False).eval()
    attr_dir = save_checkpoint(tmp / "attr", attr, {**attr.arch_dict(), **EXTRA}, {})
    save_fast_map_net(attr_dir, FastMapNet(attr.backbone.channels[1:3], sum(classes), hidden=8), {})
    san = ReIDNet(4, classes, mode="san-gal", backbone="resnet18", pretrained=False).eval()
    san_dir = save_checkpoint(tmp / "san", san, {**san.arch_dict(), **EXTRA}, {"attr_checkpoint": str(attr_dir)})
    gallery = Path(shutil.copytree(tiny_synth / "bounding_box_test", tmp / "gallery"))
    assert main(["index", str(gallery), "--checkpoint", str(ckpt), "--out", str(tmp / "index")]) == 0
    return {"tmp": tmp, "root": tiny_synth, "ckpt": ckpt, "attr": attr_dir, "san": san_dir, "gallery": gallery,
            "index": tmp / "index", "query": sorted((tiny_synth / "query").glob("*.jpg"))[0],
            "over": lambda out: tiny_overrides(tiny_synth, out)}


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots``: what "nothing changed" compares."""
    found = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        found.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return found


def a_file(tmp_path: Path) -> Path:
    """A regular file: any output below it cannot be written, root or not."""
    path = tmp_path / "plain-file"
    path.write_text("not a folder")
    return path


# ----------------------------------------------------------------------------- case 1: export replaces atomically


def test_export_killed_while_writing_keeps_the_old_model(world, tmp_path, capsys, monkeypatch):
    target = tmp_path / "e.onnx"
    target.write_bytes(b"the previous model")

    def killed(model, args, f, **kwargs):  # the process dies with the graph half written
        Path(f).write_bytes(b"half a graph")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch.onnx, "export", killed)
    code, _, _ = play(capsys, "export", "--checkpoint", world["ckpt"], "--out", target)
    assert code == 130 and target.read_bytes() == b"the previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["e.onnx"]  # no temp file left behind


# ----------------------------------------------------------------------------- case 2: outputs onto inputs


def test_export_onto_its_own_checkpoint_weights_is_refused(world, tmp_path, capsys):
    ckpt = Path(shutil.copytree(world["ckpt"], tmp_path / "ckpt"))
    before = snapshot(ckpt)
    refused(play(capsys, "export", "--checkpoint", ckpt, "--out", ckpt / "model.safetensors"),
            ckpt / "model.safetensors", "--checkpoint")
    assert snapshot(ckpt) == before


def test_search_page_onto_the_index_is_refused(world, tmp_path, capsys):
    index = Path(shutil.copytree(world["index"], tmp_path / "index"))
    before = snapshot(index)
    refused(play(capsys, "search", world["query"], "--index", index, "--html", index / "meta.json"),
            index / "meta.json", "--index")
    assert snapshot(index) == before


def test_search_page_onto_a_gallery_image_is_refused(world, tmp_path, capsys):
    victim = sorted(world["gallery"].glob("*.jpg"))[0]
    before = snapshot(world["gallery"])
    refused(play(capsys, "search", world["query"], "--index", world["index"], "--html", victim), victim,
            "the gallery")
    assert snapshot(world["gallery"]) == before


def test_search_page_onto_the_query_image_is_refused(world, tmp_path, capsys):
    query = Path(shutil.copy(world["query"], tmp_path / "query.jpg"))
    before = snapshot(query)
    refused(play(capsys, "search", query, "--index", world["index"], "--html", query), query, "the query image")
    assert snapshot(query) == before


def test_label_onto_the_truth_it_compares_with_is_refused(world, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    truth = Path(shutil.copy(world["root"] / "market_attribute.mat", labels / "attributes.mat"))
    before = snapshot(truth)
    refused(play(capsys, "label", "--checkpoint", world["attr"], "--out", labels, "--compare", truth,
                 *world["over"](tmp_path / "run")), truth, "--compare")
    assert snapshot(truth) == before  # else the pseudo-labels overwrite the truth and are compared with themselves


# ----------------------------------------------------------------------------- case 6: the map predictor's record


def test_a_map_predictor_without_its_record_is_refused(world, tmp_path, capsys):
    attr = Path(shutil.copytree(world["attr"], tmp_path / "attr"))
    (attr / FAST_MAP_NET_RECORD).unlink()
    data = bytearray((attr / FAST_MAP_NET_FILE).read_bytes())
    data[-2] ^= 0x40  # a weight's byte: safetensors loads it without complaint
    (attr / FAST_MAP_NET_FILE).write_bytes(bytes(data))
    refused(play(capsys, "index", world["gallery"], "--checkpoint", world["san"], "--attr-checkpoint", attr,
                 "--aah", "fast", "--out", tmp_path / "index"), attr / FAST_MAP_NET_RECORD, "sangal distill")
    assert not (tmp_path / "index").exists()


# ----------------------------------------------------------------------------- case 11: unwritable outputs


def test_unwritable_index_output_is_one_line(world, tmp_path, capsys):
    out = a_file(tmp_path) / "index"
    refused(play(capsys, "index", world["gallery"], "--checkpoint", world["ckpt"], "--out", out), out, "is a file")


def test_unwritable_export_output_is_one_line(world, tmp_path, capsys):
    out = a_file(tmp_path) / "e.onnx"
    refused(play(capsys, "export", "--checkpoint", world["ckpt"], "--out", out), out, "is a file")


def test_export_onto_an_existing_folder_is_one_line(world, tmp_path, capsys):
    (tmp_path / "models").mkdir()
    refused(play(capsys, "export", "--checkpoint", world["ckpt"], "--out", tmp_path / "models"),
            tmp_path / "models", "is a folder")


def test_unwritable_search_page_is_one_line(world, tmp_path, capsys):
    out = a_file(tmp_path) / "page.html"
    refused(play(capsys, "search", world["query"], "--index", world["index"], "--html", out), out, "is a file")


def test_unwritable_label_output_is_one_line(world, tmp_path, capsys):
    out = a_file(tmp_path) / "labels"
    refused(play(capsys, "label", "--checkpoint", world["attr"], "--out", out, *world["over"](tmp_path / "run")),
            out, "is a file")


def test_unwritable_run_folder_is_one_line(world, tmp_path, capsys):
    out = a_file(tmp_path) / "run"
    refused(play(capsys, "train", *world["over"](out), "model.mode=id"), out, "is a file")
    refused(play(capsys, "train-attr", *world["over"](out)), out, "is a file")


def test_unwritable_synthetic_output_is_one_line(world, tmp_path, capsys):
    out = a_file(tmp_path) / "synth"
    refused(play(capsys, "synth", "--out", out, "--ids", "4", "--cams", "2"), out, "is a file")


# ----------------------------------------------------------------------------- case 20: a Re-ID net as attribute net


def test_export_names_the_kind_of_a_reid_attr_checkpoint(world, tmp_path, capsys):
    refused(play(capsys, "export", "--checkpoint", world["san"], "--attr-checkpoint", world["ckpt"], "--out",
                 tmp_path / "e.onnx"), world["ckpt"], "is kind reid, expected attribute")
    assert not (tmp_path / "e.onnx").exists()
