"""Run folders are never clobbered: the guard before a run starts, the config check before a run resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sangal.config import Config, load_config, to_dict
from sangal.errors import ConfigError
from sangal.store.runs import RESUME_FREE, check_resume_config, guard_run_folder


def _run(folder: Path, *checkpoints: str) -> Path:
    folder.mkdir(parents=True)
    for name in checkpoints:
        (folder / "checkpoints" / name).mkdir(parents=True)
        (folder / "checkpoints" / name / "model.safetensors").write_bytes(b"weights")
    (folder / "metrics.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    return folder


def test_an_empty_or_new_folder_is_free(tmp_path):
    guard_run_folder(tmp_path / "new", overwrite=False)
    guard_run_folder(_run(tmp_path / "r"), overwrite=False)  # logs but no checkpoint: nothing to lose


@pytest.mark.parametrize("checkpoints, what, hint", [
    (("last", "final"), "a finished run", "--overwrite"),
    (("last",), "an interrupted run", "--resume"),
])
def test_a_folder_holding_a_run_is_refused_and_kept(tmp_path, checkpoints, what, hint):
    run = _run(tmp_path / "r", *checkpoints)
    with pytest.raises(ConfigError) as err:
        guard_run_folder(run, overwrite=False)
    assert str(run) in str(err.value) and what in str(err.value) and hint in str(err.value)
    assert all((run / "checkpoints" / name / "model.safetensors").read_bytes() == b"weights" for name in checkpoints)
    guard_run_folder(run, overwrite=False, resume=True)  # continuing it is fine


def test_overwrite_deletes_the_run_and_nothing_else(tmp_path):
    run = _run(tmp_path / "r", "last", "final")
    guard_run_folder(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    with pytest.raises(ConfigError, match="exclude each other"):
        guard_run_folder(run, overwrite=True, resume=True)


def test_resume_refuses_a_changed_config_listing_the_keys(tmp_path):
    saved = to_dict(load_config(None, ["data.p=4", "train.seed=0"]))
    now = to_dict(load_config(None, ["data.p=3", "train.seed=7"]))
    with pytest.raises(ConfigError) as err:
        check_resume_config(saved, now, tmp_path / "last")
    message = str(err.value)
    assert str(tmp_path / "last") in message and "data.p 4 -> 3" in message and "train.seed 0 -> 7" in message
    assert "\n" not in message


def test_resume_accepts_keys_that_cannot_change_the_result(tmp_path):
    saved = to_dict(load_config(None, []))
    free = ["out=elsewhere", "train.device=cpu", "data.num_workers=0", "train.log_every=3",
            "train.eval_every=2", "train.checkpoint_every=7", "train.epochs=40", "attr_train.epochs=3",
            "study.workers=0"]
    assert {o.split("=")[0] for o in free} == set(RESUME_FREE)
    check_resume_config(saved, to_dict(load_config(None, free)), tmp_path / "last")
    old = {k: v for k, v in saved.items() if k != "distill"}  # a config from before `distill` existed
    check_resume_config(old, saved, tmp_path / "last")
    before_study = {k: v for k, v in saved.items() if k != "study"}  # a run of an interrupted demo study resumes
    check_resume_config(before_study, to_dict(load_config(None, ["study.workers=0"])), tmp_path / "last")
    check_resume_config({**saved, "name": "a retired key"}, saved, tmp_path / "last")  # written while configs had it
    with pytest.raises(ConfigError, match="distill.epochs 15 -> 3"):
        check_resume_config(old, to_dict(load_config(None, ["distill.epochs=3"])), tmp_path / "last")
    check_resume_config(None, to_dict(Config()), tmp_path / "last")  # nothing recorded: nothing to compare


HOLD = """
import sys, time
from pathlib import Path
from sangal.store.runs import run_folder
with run_folder(Path(sys.argv[1]), overwrite=False, resume=True):
    print("training", flush=True)
    time.sleep(120)
"""


def test_a_live_run_is_busy_never_interrupted_and_overwrite_keeps_it(tmp_path):
    """One writer per run folder (issue 29): the index's lock, held by the run for its whole life."""
    import subprocess
    import sys

    from sangal.errors import BusyError
    from sangal.store.runs import run_folder

    run = _run(tmp_path / "r", "last")
    live = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "training"
        for overwrite, resume in ((False, False), (True, False), (False, True)):
            with pytest.raises(BusyError, match=f"is being written by pid {live.pid} on") as err:
                with run_folder(run, overwrite=overwrite, resume=resume):
                    pytest.fail("entered a folder another process trains into")
            assert "interrupted" not in str(err.value)
        assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() == b"weights"
    finally:
        live.kill()
        live.wait()
    with pytest.raises(ConfigError, match="interrupted run"):  # its trainer is gone: now it is interrupted
        with run_folder(run, overwrite=False):
            pass
    with run_folder(run, overwrite=True):
        assert not (run / "checkpoints").exists()
