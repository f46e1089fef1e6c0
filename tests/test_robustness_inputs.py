"""Hostile input, second probe (issue 29): evaluation, ranges, devices, YAML and CSV files, datasets, log lines.

One test per case of the issue (cases 8, 9, 10, 12, 13, 14, 15, 18, 19), each through the real CLI where the case
came from it: exit 2, one ``error:`` line naming the file or key, no traceback, nothing written.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from cli_helpers import play
from cli_helpers import refused_after_progress as refused
from sangal.data.attributes import get_schema
from sangal.models import ReIDNet
from sangal.store.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 64, 32
BINARY = bytes(range(256)) * 4  # not UTF-8 (0x80 is a continuation byte with no lead)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A random-weight id checkpoint (resnet18, 64x32) trained on the tiny synthetic set's 4 train ids."""
    torch.manual_seed(0)
    model = ReIDNet(4, get_schema("market1501").num_classes, mode="id", backbone="resnet18", pretrained=False)
    arch = {**model.arch_dict(), "dataset": "market1501", "colour_mode": "binary", "height": H, "width": W}
    return save_checkpoint(tmp_path_factory.mktemp("inputs") / "ckpt", model.eval(), arch, {"step": 1})


def dataset_copy(tiny_synth: Path, tmp_path: Path, gallery: tuple[str, ...] = ()) -> Path:
    """A copy of the tiny synthetic set; ``gallery``: the only gallery images kept."""
    root = Path(shutil.copytree(tiny_synth, tmp_path / "data"))
    for image in (root / "bounding_box_test").iterdir() if gallery else ():
        if image.name not in gallery:
            image.unlink()
    return root


def evaluate(capsys, tiny_overrides, ckpt: Path, root: Path, tmp_path: Path, *extra):
    over = [*tiny_overrides(root, tmp_path / "out"), "model.mode=id"]  # the checkpoint's mode, not the tiny runs'
    return play(capsys, "evaluate", "--checkpoint", ckpt, *over, *extra)


# ----------------------------------------------------------------------------- 8. evaluate drops queries silently


def test_case8_evaluate_states_the_queries_it_skipped(ckpt, tiny_synth, tiny_overrides, tmp_path, capsys):
    root = dataset_copy(tiny_synth, tmp_path, gallery=("0025_c1s2_000499_01.jpg",))  # 2 of 9 queries match it
    code, out, _ = evaluate(capsys, tiny_overrides, ckpt, root, tmp_path)
    assert code == 0 and "rank1 100.00%" in out
    assert "7 of 9 queries skipped (no true match in the gallery)" in out


def test_case8_evaluate_with_no_query_left_is_refused(ckpt, tiny_synth, tiny_overrides, tmp_path, capsys):
    root = dataset_copy(tiny_synth, tmp_path, gallery=("0000_c2s6_005453_01.jpg",))  # a distractor: no match
    line = refused(evaluate(capsys, tiny_overrides, ckpt, root, tmp_path), root, "none of the 9 queries")
    assert "100" not in line


# ----------------------------------------------------------------------------- 9. --min-confidence out of [0, 1]


def test_case9_min_confidence_outside_0_1_is_refused(tiny_synth, tiny_overrides, tmp_path, capsys):
    out = tmp_path / "labels"
    for value in ("2", "-0.1", "nan"):
        refused(play(capsys, "label", "--checkpoint", tmp_path / "no-ckpt", "--out", out, "--min-confidence", value,
                     *tiny_overrides(tiny_synth, tmp_path / "run")), "--min-confidence", "[0, 1]")
    assert not out.exists()


# ----------------------------------------------------------------------------- 10. dangling symlink in a dataset


def test_case10_dangling_symlink_in_a_dataset_is_an_error(ckpt, tiny_synth, tiny_overrides, tmp_path, capsys):
    root = dataset_copy(tiny_synth, tmp_path)
    link = root / "bounding_box_test" / "0025_c2s1_009999_01.jpg"
    os.symlink(tmp_path / "gone.jpg", link)
    refused(evaluate(capsys, tiny_overrides, ckpt, root, tmp_path), link, "a link to a file that does not exist")


def test_case10_dangling_symlink_is_listed_under_skip(tiny_synth, tmp_path):
    from sangal.data import load_dataset

    root = dataset_copy(tiny_synth, tmp_path)
    link = root / "query" / "0025_c2s1_009999_01.jpg"
    os.symlink(tmp_path / "gone.jpg", link)
    listing = tmp_path / "run" / "bad_images.txt"
    dataset = load_dataset("synthetic", root, on_bad_image="skip", bad_list=listing)
    assert [p for p, _ in dataset.bad_images] == [link] and link not in {r.path for r in dataset.query}
    assert listing.read_text().startswith(f"{link}\t")


def test_case10_dangling_symlink_in_a_gallery_is_listed_as_skipped(ckpt, tiny_synth, tmp_path, capsys):
    import json

    gallery = Path(shutil.copytree(tiny_synth / "bounding_box_test", tmp_path / "gallery"))
    (gallery / "zz_gone.jpg").symlink_to(gallery / "deleted.jpg")
    code, _, _ = play(capsys, "index", gallery, "--checkpoint", ckpt, "--out", tmp_path / "index")
    skipped = json.loads((tmp_path / "index" / "meta.json").read_text())["skipped"]
    assert code == 0 and [s["path"] for s in skipped] == ["zz_gone.jpg"]


# ----------------------------------------------------------------------------- 12. devices that do not exist


def test_case12_cuda_without_a_gpu_is_one_line(ckpt, tiny_synth, tiny_overrides, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = tiny_synth
    line = refused(evaluate(capsys, tiny_overrides, ckpt, root, tmp_path, "train.device=cuda"), "train.device=cuda")
    assert "no CUDA device here; use cpu" in line
    line = refused(play(capsys, "search", tmp_path / "q.jpg", "--index", tmp_path / "idx", "--device", "cuda"),
                   "--device=cuda")
    assert "no CUDA device here; use cpu" in line


def test_case12_a_device_that_is_no_device_is_refused(tmp_path, capsys):
    refused(play(capsys, "config", "show", "train.device=potato"), "train.device=potato", "auto, cpu, cuda")
    for command in (["search", tmp_path / "q.jpg", "--index", tmp_path / "idx"],
                    ["index", tmp_path / "gallery", "--checkpoint", tmp_path / "ckpt"]):
        refused(play(capsys, *command, "--device", "potato"), "--device=potato")
    assert not (tmp_path / "gallery.sangal-index").exists()


# ----------------------------------------------------------------------------- 13. absurd learning rates and epochs


@pytest.mark.parametrize("override", ["optim.lr=1e308", "optim.lr=1e10", "attr_train.lr=1e5", "distill.lr=50",
                                      "optim.milestone_lrs=[1e-4,1e-4,1e300]", "train.epochs=1000000000",
                                      "attr_train.epochs=100000000", "optim.warmup_start_lr=1e200"])
def test_case13_absurd_rates_and_epochs_are_refused(override, capsys):
    refused(play(capsys, "config", "show", override), override.split("=")[0], "out of range")


# ----------------------------------------------------------------------------- 14. binary files


def test_case14_a_binary_yaml_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "weights.yaml"
    bad.write_bytes(BINARY)
    refused(play(capsys, "config", "show", "-c", bad), bad, "not UTF-8 text")


def test_case14_a_binary_csv_dataset_is_one_line(ckpt, tiny_synth, tiny_overrides, tmp_path, capsys):
    bad = tmp_path / "set.csv"
    bad.write_bytes(b"path,pid,camid,split\n" + BINARY)
    refused(evaluate(capsys, tiny_overrides, ckpt, tiny_synth, tmp_path, "data.dataset=csv", f"data.root={bad}"),
            bad, "not UTF-8 text")


# ----------------------------------------------------------------------------- 15. base: is not a path


@pytest.mark.parametrize("base, kind", [("{a: 1}", "mapping"), ("[a.yaml, b.yaml]", "list"), ("3", "int")])
def test_case15_base_that_is_not_a_path_is_one_line(base, kind, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"base: {base}\ntrain:\n  epochs: 3\n")
    refused(play(capsys, "config", "show", "-c", cfg), cfg, "'base'", kind)


# ----------------------------------------------------------------------------- 18. log lines


def test_case18_log_lines_keep_their_own_line_breaks_and_escape_names(tiny_synth, tmp_path):
    import io

    from sangal.cli import _PrintableLog
    from sangal.data import load_dataset

    root = Path(shutil.copytree(tiny_synth, tmp_path / "syn\nth\x1b[2J"))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_PrintableLog("%(levelname)s %(message)s"))
    logger, level = logging.getLogger("sangal.data.records"), logging.getLogger("sangal.data.records").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        load_dataset("synthetic", root)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    escaped = str(root).replace("\n", "\\n").replace("\x1b", "\\x1b")
    assert stream.getvalue().startswith(f"INFO loaded synthetic from {escaped}\ntrain   | 4 ids | 22 images")
    assert stream.getvalue().count("\n") == 4  # the header and three split lines


def test_case18_synth_prints_its_summary_once(tmp_path, capsys):
    code, out, err = play(capsys, "synth", "--out", tmp_path / "s", "--ids", "4", "--cams", "2", "--height", "64",
                          "--width", "32")
    assert code == 0 and (out + err).count("| 2 ids |") <= 1 and str(tmp_path / "s") in out


# ----------------------------------------------------------------------------- 19. YAML


def test_case19_a_duplicate_key_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  epochs: 3\n  seed: 1\n  epochs: 30\n")
    refused(play(capsys, "config", "show", "-c", cfg), cfg, "train.epochs", "lines 2 and 4")


@pytest.mark.parametrize("text, key", [("train:\n  epochs: true\n", "train.epochs"),
                                       ("optim:\n  lr: false\n", "optim.lr")])
def test_case19_a_boolean_where_a_number_belongs_is_one_line(text, key, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    refused(play(capsys, "config", "show", "-c", cfg), cfg, key, "a boolean")
    refused(play(capsys, "config", "show", f"{key}=yes"), key, "a boolean")


def test_case19_a_config_path_that_is_a_folder_says_so(tmp_path, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    line = refused(play(capsys, "config", "show", "-c", folder), folder, "is a folder")
    assert "does not exist" not in line
