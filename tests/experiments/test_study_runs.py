"""A study's runs side by side in spawned workers: the same figures as one at a time, resume, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from sangal.config import load_config, with_overrides
from sangal.errors import ConfigError
from sangal.experiments import study_runs
from sangal.experiments.study import Variant, run_study, variant_config
from sangal.experiments.study_runs import RunError, scheduling, stage_timings
from sangal.store.paths import default_paths
from sangal.store.runs import RESUME_FREE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = (Variant("id", ("model.mode=id",)), Variant("san-gal", ("model.mode=san-gal",)))


def _figures(doc: dict) -> dict:
    """Each run's figures and pairing hashes (what the schedule must not change)."""
    return {name: v["seeds"] for name, v in doc["variants"].items()}


def _result_files(out) -> dict:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in (out / "runs").rglob("result.json")}


@pytest.fixture(scope="module")
def in_process(tiny_synth, tiny_overrides, tmp_path_factory):
    """A tiny study run one run at a time in this process, at one thread."""
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(tiny_synth, out) + ["train.epochs=1", "study.workers=1"])
    return out, cfg, run_study(cfg, ROWS, [0], localisation_images=0)


@pytest.mark.slow
def test_two_workers_give_the_figures_of_one_at_a_time_to_the_bit(in_process, monkeypatch) -> None:
    out, cfg, first = in_process
    assert first["environment"]["study_workers"] == 1 and first["environment"]["run_threads"] == 1
    per_run = _result_files(out)
    shutil.rmtree(out / "runs")  # the attribute net and the maps stay: only the runs go again
    monkeypatch.setattr(study_runs, "available_cores", lambda: 2)  # one thread per worker on any machine
    again = run_study(with_overrides(cfg, ["study.workers=2"]), ROWS, [0], localisation_images=0)
    assert again["environment"]["study_workers"] == 2 and again["environment"]["run_threads"] == 1
    assert _figures(again) == _figures(first)
    assert _result_files(out) == per_run  # per-query AP and hits too
    assert set(again["runs"]["cpu_s"]) == {"id seed 0", "san-gal seed 0"} and again["runs"]["wall_s"] > 0


@pytest.mark.slow
def test_a_finished_run_is_read_and_a_missing_one_runs_in_a_worker(in_process, monkeypatch) -> None:
    out, cfg, first = in_process
    kept = variant_config(cfg, ROWS[0], 0)
    gone = variant_config(cfg, ROWS[1], 0)
    kept_file = out / "runs" / "id" / "seed0" / "result.json"
    stamp = kept_file.stat().st_mtime_ns
    (out / "runs" / "san-gal" / "seed0" / "result.json").unlink()
    shutil.rmtree(default_paths(gone)["reid_run"])

    def refuse(*args, **kwargs):
        raise AssertionError("a run was trained in the study's own process")

    import sangal.train.reid as train_reid

    monkeypatch.setattr(train_reid, "train_reid", refuse)
    monkeypatch.setattr(study_runs, "available_cores", lambda: 2)
    again = run_study(with_overrides(cfg, ["study.workers=2"]), ROWS, [0], localisation_images=0)
    assert kept_file.stat().st_mtime_ns == stamp and default_paths(kept)["reid_run"].is_dir()
    assert _figures(again) == _figures(first)


@pytest.mark.slow
def test_a_failing_run_in_a_worker_is_one_line_naming_the_run(in_process, tmp_path, monkeypatch) -> None:
    out, cfg, _ = in_process
    cfg = with_overrides(cfg, ["study.workers=2"])
    for name in ("attr", "aah"):
        shutil.copytree(out / name, tmp_path / name, ignore=shutil.ignore_patterns(".*"))
    cfg = with_overrides(cfg, [f"out={tmp_path}"])
    blocked = default_paths(variant_config(cfg, ROWS[0], 0))["reid_run"] / "checkpoints" / "final"
    blocked.mkdir(parents=True)  # a finished Re-ID run without its result.json: the run refuses to overwrite it
    monkeypatch.setattr(study_runs, "available_cores", lambda: 2)
    with pytest.raises(RunError) as caught:
        run_study(cfg, ROWS, [0], localisation_images=0)
    message = str(caught.value)
    assert message.startswith("study run id seed 0: ") and "holds a finished run" in message
    assert "\n" not in message and caught.value.exit_code == 2
    assert (tmp_path / "runs" / "san-gal" / "seed0" / "result.json").is_file()  # the run beside it finished


def test_workers_resolve_to_the_cores_and_threads_per_run(monkeypatch, tiny_synth, tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path))
    monkeypatch.setattr(study_runs, "available_cores", lambda: 8)
    auto = scheduling(with_overrides(cfg, ["study.workers=0"]))
    assert (auto.workers, auto.threads) == (2, 4)
    three = scheduling(with_overrides(cfg, ["study.workers=3"]))
    assert (three.workers, three.threads) == (3, 2)
    one = scheduling(cfg)  # the default: one at a time, at this process's threads (1 here)
    assert (one.workers, one.threads) == (1, 1)
    monkeypatch.setattr(study_runs, "available_cores", lambda: 1)
    assert scheduling(with_overrides(cfg, ["study.workers=0"])).workers == 1
    with pytest.raises(ConfigError, match="study.workers"):
        with_overrides(cfg, ["study.workers=-1"])
    assert "study.workers" in RESUME_FREE  # an interrupted study resumes under another schedule


def test_stage_timings_count_runs_side_by_side_once() -> None:
    timings = {"attribute net": 10.0, "id seed 0": 30.0, "san-gal seed 0": 32.0, "leak check": 5.0}
    runs = {"study_workers": 2, "wall_s": 33.0, "cpu_s": {"id seed 0": 29.0, "san-gal seed 0": 31.0}}
    assert stage_timings(timings, runs) == {"attribute net": 10.0, "leak check": 5.0,
                                            "Re-ID runs (2 at a time)": 33.0}
