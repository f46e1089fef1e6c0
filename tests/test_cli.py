"""The `sangal` command: every step end to end on the tiny synthetic set, errors as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from sangal.cli import main
from sangal.data import load_dataset
from worker_helpers import first_worker_error


def test_config_show_applies_overrides(capsys):
    assert main(["config", "show", "optim.lr=0.002", "model.mode=id"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.002" in out and "mode: id" in out and "backbone: resnet50" in out


def test_bad_input_is_one_error_line(capsys, tmp_path):
    assert main(["config", "show", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: ") and "optim.lrr" in err[0]
    missing = tmp_path / "nowhere"
    assert main(["train-attr", f"data.root={missing}", "data.dataset=market1501"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and str(missing) in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["index", "g", "--checkpoint", "c", "--num-workers", "-1"], "--num-workers: must be >= 0, got -1"),
    (["index", "g", "--checkpoint", "c", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["search", "q.jpg", "--index", "i", "-k", "ten"], "-k: expected a whole number, got 'ten'"),
    (["demo", "--seeds", "0"], "--seeds: must be >= 1, got 0"),
])
def test_bad_counts_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_commands_end_to_end(tiny_synth, tiny_overrides, tmp_path, capsys):
    over = tiny_overrides(tiny_synth, tmp_path / "run")
    assert main(["train-attr", *over]) == 0
    assert "mA" in capsys.readouterr().out
    assert main(["aah", *over]) == 0
    out = capsys.readouterr().out
    assert all(f"{split}: " in out for split in ("train", "query", "gallery"))
    assert main(["train", "--mode", "san-gal", "--aah", "offline", *over]) == 0
    out = capsys.readouterr().out
    assert "re-id: rank1" in out and "mAP" in out
    ckpt = tmp_path / "run" / "reid" / "san-gal" / "checkpoints" / "final"
    assert main(["evaluate", "--checkpoint", str(ckpt), *over]) == 0
    evaluated = capsys.readouterr().out
    assert evaluated.split("rank1")[1].split()[0] == out.split("rank1")[1].split()[0]  # same Rank-1
    assert main(["evaluate", "--checkpoint", str(ckpt), "--rerank", *over]) == 0
    assert "mAP" in capsys.readouterr().out
    index = tmp_path / "index"
    assert main(["index", str(tiny_synth / "bounding_box_test"), "--checkpoint", str(ckpt), "--out", str(index),
                 "--num-workers", "1"]) == 0
    query = sorted((tiny_synth / "query").glob("*.jpg"))[0]
    html = tmp_path / "hits.html"
    assert main(["search", str(query), "--index", str(index), "-k", "3", "--html", str(html)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("bounding_box_test") >= 3 and html.is_file()


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_resume_matches_uninterrupted(tiny_synth, tiny_overrides, tmp_path):
    from sangal.config import load_config
    from sangal.train.reid import train_reid

    budget = ["model.mode=id", "train.epochs=6", "optim.milestones=[3]"]  # 6 epochs x 2 steps: stopped after 2
    over = tiny_overrides(tiny_synth, tmp_path / "killed") + budget
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sangal", "train", *over], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "killed" / "reid" / "id" / "metrics.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(json.loads(metrics.read_text()).get("train", [])) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    state = json.loads((tmp_path / "killed/reid/id/checkpoints/last/state.json").read_text())
    assert 0 < state["global_step"] < 12 and state["epoch"] < 6
    train_reid(load_config(None, over), resume=True)
    ref_over = tiny_overrides(tiny_synth, tmp_path / "ref") + budget
    train_reid(load_config(None, ref_over))
    a = load_file(tmp_path / "killed/reid/id/checkpoints/final/model.safetensors")
    b = load_file(tmp_path / "ref/reid/id/checkpoints/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_synth_writes_a_market_layout_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--ids", "6", "--cams", "2", "--seed", "3",
                 "--height", "64", "--width", "32"]) == 0
    assert capsys.readouterr().out == f"wrote a synthetic dataset to {out}\n"  # the summary is the load's log line
    assert "| 3 ids |" in load_dataset("synthetic", out).summary()
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        assert any((out / split).glob("*.jpg")), split
    assert (out / "market_attribute.mat").is_file()
    assert main(["synth", "--out", str(out), "--ids", "7", "--cams", "2"]) == 2  # other parameters: refused
    assert "error: " in capsys.readouterr().err


def test_overrides_anywhere_on_the_command_line(tmp_path, capsys):
    from sangal.cli import parse_args

    args = parse_args(["train", "-c", "X.yaml", "data.root=D", "--mode", "san-gal", "train.epochs=8", "-v"])
    assert args.overrides == ["data.root=D", "train.epochs=8"] and args.mode == "san-gal" and args.verbose
    assert parse_args(["train", "--mode", "id", "out=runs/x"]).overrides == ["out=runs/x"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 0.5\n")
    assert main(["config", "show", "optim.lr=0.002", "-c", str(cfg), "model.mode=id"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.002" in out and "mode: id" in out  # the override after -c wins over the file
    with pytest.raises(SystemExit):
        parse_args(["train", "--mode", "id", "--epochs", "3"])
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["search", "q.jpg", "--index", "i", "data.root=D"])  # search takes no overrides


def _worker_failure(exc: Exception):
    """A `run` whose DataLoader worker raises ``exc``: what a corrupt image does mid-evaluation."""
    class Failing(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise exc

    def run(args):
        raise first_worker_error(Failing())
    return run


@pytest.mark.slow
def test_worker_errors_are_one_line(monkeypatch, capsys):
    from sangal.errors import DatasetError

    monkeypatch.setattr("sangal.cli.run", _worker_failure(DatasetError("q/0001_c1.jpg: unreadable or corrupt image")))
    assert main(["config", "show"]) == 2
    assert capsys.readouterr().err == "error: q/0001_c1.jpg: unreadable or corrupt image\n"
    assert main(["config", "show", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "DataLoader worker process 0" in err  # -v shows the worker's traceback
    assert err.splitlines()[-1] == "error: q/0001_c1.jpg: unreadable or corrupt image"
    monkeypatch.setattr("sangal.cli.run", _worker_failure(ValueError("boxes must be 4 numbers")))
    assert main(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ValueError: boxes must be 4 numbers (in a DataLoader worker")


@pytest.mark.slow
def test_corrupt_image_is_one_line_and_skip_lists_it_in_the_run_folder(tiny_synth, tiny_overrides, tmp_path, capsys):
    import shutil

    from sangal.config import load_config
    from sangal.data.setup import load_reid_dataset

    root = tmp_path / "copy"
    shutil.copytree(tiny_synth, root)
    bad = sorted((root / "query").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    over = tiny_overrides(root, tmp_path / "run")
    assert main(["train-attr", *over]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: unreadable or corrupt image")
    assert "1 of " in err and "data.on_bad_image=skip" in err
    ds = load_reid_dataset(load_config(None, over + ["data.on_bad_image=skip"]))
    assert bad not in {r.path for r in ds.query}
    assert (tmp_path / "run" / "bad_images.txt").read_text().startswith(f"{bad}\t")


def _commands(parser, prefix=()):
    """Every command path of ``parser``: (), ("train",), ("config", "show"), ... (new commands included)."""
    import argparse

    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands(__import__("sangal.cli", fromlist=["build_parser"]).build_parser()))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sangal")
def test_help_works_for_the_program_and_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sangal{''.join(' ' + c for c in command)}") and "options:" in out


def test_every_command_is_covered_by_the_help_test():
    assert {c[0] for c in COMMANDS if c} >= {"train", "train-attr", "evaluate", "index", "search", "study", "demo"}
    assert ("config", "show") in COMMANDS


def test_control_characters_never_reach_the_terminal(monkeypatch, capsys):
    import logging

    from sangal.errors import DatasetError

    evil = "g/\x1b]0;pwned\x07\x1b[2Jx.jpg"

    def run(args):
        print(f"found {evil}\tok")
        logging.getLogger("sangal.test").warning("skipping %s", evil)
        raise DatasetError(f"{evil}: unreadable\nimage")

    monkeypatch.setattr("sangal.cli.run", run)
    assert main(["config", "show"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "found g/\\x1b]0;pwned\\x07\\x1b[2Jx.jpg\tok\n"  # tabs and line ends kept
    assert captured.err == "error: g/\\x1b]0;pwned\\x07\\x1b[2Jx.jpg: unreadable\\nimage\n"  # one line
    assert "\x1b" not in captured.out + captured.err


def test_log_lines_are_escaped_too():
    import logging

    from sangal.cli import _PrintableLog

    record = logging.LogRecord("sangal.x", logging.WARNING, __file__, 1, "skipping %s", ("a\x1b[2Jb.jpg",), None)
    assert _PrintableLog("%(levelname)s %(message)s").format(record) == "WARNING skipping a\\x1b[2Jb.jpg"
