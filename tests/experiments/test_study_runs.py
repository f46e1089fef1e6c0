"""A study's runs side by side in spawned workers: the same figures as one at a time, resume, one-line errors."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from sangal.aah import job as aah_job
from sangal.config import load_config, with_overrides
from sangal.errors import ConfigError
from sangal.experiments import study, study_runs
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
def in_process(tiny_synth, tiny_overrides, tiny_attr_run, tmp_path_factory):
    """A tiny study run one run at a time in this process, at one thread. Its attribute net and maps are the
    session's (the same overrides train them): the study finds them done; the tests that need the attribute net
    trained anew train it in their own folder."""
    out = tiny_attr_run.copy_to(tmp_path_factory.mktemp("runs"))
    cfg = load_config(None, tiny_overrides(tiny_synth, out) + ["train.epochs=1", "study.workers=1"])
    return out, cfg, run_study(cfg, ROWS, [0], localisation_images=6)


@pytest.mark.slow
def test_two_workers_give_the_figures_of_one_at_a_time_to_the_bit(in_process, monkeypatch) -> None:
    """Also: the san-gal run trains while the study builds its test maps and evaluates once they exist."""
    out, cfg, first = in_process
    assert first["environment"]["study_workers"] == 1 and first["environment"]["run_threads"] == 1
    per_run = _result_files(out)
    shutil.rmtree(out / "runs")  # the attribute net and the maps stay: only the runs go again
    monkeypatch.setattr(study_runs, "available_cores", lambda: 2)  # one thread per worker on any machine
    build, seen, san_gal = aah_job.build_caches, {}, out / "runs" / "san-gal" / "seed0"

    def build_caches(c, splits=None, **kwargs):  # the test maps wait for the san-gal run to finish training
        if splits == ["query", "gallery"]:
            seen["trained"] = _wait_for(san_gal / "reid" / "san-gal" / "checkpoints" / "final" / "state.json")
            seen["evaluated"] = (san_gal / "result.json").is_file()
        return build(c, splits=splits, **kwargs)

    monkeypatch.setattr(aah_job, "build_caches", build_caches)
    again = run_study(with_overrides(cfg, ["study.workers=2"]), ROWS, [0], localisation_images=6)
    assert seen == {"trained": True, "evaluated": False}  # trained beside the test maps, evaluated after them
    assert again["environment"]["study_workers"] == 2 and again["environment"]["run_threads"] == 1
    assert _figures(again) == _figures(first)
    assert again["localisation"] == first["localisation"] and first["localisation"]  # beside the runs now
    assert _result_files(out) == per_run  # per-query AP and hits too
    assert list(again["runs"]["cpu_s"]) == ["id seed 0", "san-gal seed 0"] and again["runs"]["wall_s"] > 0
    assert again["runs"]["beside_stages_s"] > 0 and first["runs"]["beside_stages_s"] == 0.0


def _wait_for(path, seconds: float = 300.0) -> bool:
    deadline = time.time() + seconds
    while not path.is_file() and time.time() < deadline:
        time.sleep(0.2)
    return path.is_file()


@pytest.mark.slow
def test_map_free_runs_go_beside_the_attribute_net_at_its_threads_and_change_no_figure(
        in_process, tmp_path, monkeypatch) -> None:
    _, cfg, first = in_process
    id_result = tmp_path / "runs" / "id" / "seed0" / "result.json"
    seen = {}
    train_attr = study.ensure_attribute_net

    def attribute_net(attr_cfg):  # holds the stage until the id run, in a worker, is done
        seen["threads"], seen["maps"] = torch.get_num_threads(), (tmp_path / "aah").exists()
        metrics = train_attr(attr_cfg)
        seen["id done beside it"] = _wait_for(id_result)
        return metrics

    monkeypatch.setattr(study, "ensure_attribute_net", attribute_net)
    monkeypatch.setattr(study_runs, "available_cores", lambda: 2)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the study's process at 2 threads: its stages must go at the workers' 1
    try:
        again = run_study(with_overrides(cfg, [f"out={tmp_path}", "study.workers=2"]), ROWS, [0],
                          localisation_images=0)
        assert torch.get_num_threads() == 2  # given back after the stages
    finally:
        torch.set_num_threads(previous)
    assert seen == {"threads": 1, "maps": False, "id done beside it": True}
    assert again["environment"]["stage_threads"] == 1 and again["environment"]["run_threads"] == 1
    assert again["attributes"] == first["attributes"]  # the attribute net trained anew, to the bit
    assert _figures(again) == _figures(first)
    assert list(again["variants"]) == ["id", "san-gal"] and again["complete"]


@pytest.mark.slow
def test_a_finished_study_resumes_without_a_worker(in_process, monkeypatch) -> None:
    out, cfg, first = in_process
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("result.json")}

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started for a finished study")

    monkeypatch.setattr(study_runs, "ProcessPoolExecutor", no_pool)
    monkeypatch.setattr(study_runs, "available_cores", lambda: 2)
    again = run_study(with_overrides(cfg, ["study.workers=2"]), ROWS, [0], localisation_images=0)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("result.json")} == stamps and len(stamps) == 2
    assert _figures(again) == _figures(first)


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
def test_a_map_free_run_failing_beside_the_attribute_net_is_one_line_and_stops_the_study(
        in_process, tmp_path, monkeypatch) -> None:
    _, cfg, _ = in_process
    cfg = with_overrides(cfg, [f"out={tmp_path}", "study.workers=2"])  # nothing there: the attribute net trains
    blocked = default_paths(variant_config(cfg, ROWS[0], 0))["reid_run"] / "checkpoints" / "final"
    blocked.mkdir(parents=True)  # a finished Re-ID run without its result.json: the run refuses to overwrite it
    failed, collect, train_attr = threading.Event(), study_runs._collect, study.ensure_attribute_net

    def noted(*args):
        failure = collect(*args)
        if failure is not None:
            failed.set()
        return failure

    def attribute_net(attr_cfg):  # the id run fails while the attribute net trains
        metrics = train_attr(attr_cfg)
        assert failed.wait(300)
        return metrics

    monkeypatch.setattr(study_runs, "_collect", noted)
    monkeypatch.setattr(study, "ensure_attribute_net", attribute_net)
    monkeypatch.setattr(study_runs, "available_cores", lambda: 2)
    with pytest.raises(RunError) as caught:
        run_study(cfg, ROWS, [0], localisation_images=0)
    message = str(caught.value)
    assert message.startswith("study run id seed 0: ") and "holds a finished run" in message
    assert "\n" not in message and caught.value.exit_code == 2
    assert not (tmp_path / "runs" / "san-gal").exists()  # no run started after the failure
    assert not (tmp_path / "aah").exists()  # the study stopped after the attribute net, before the maps
    assert multiprocessing.active_children() == []  # its workers are gone


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
    beside = {**runs, "wall_s": 43.0, "beside_stages_s": 10.0}  # the id run began with the attribute net
    assert stage_timings(timings, beside) == {"attribute net": 10.0, "leak check": 5.0,
                                              "Re-ID runs (2 at a time, after the maps)": 33.0}


class _ThreadPool(ThreadPoolExecutor):
    """The spawned pool's stand-in: same calls, threads instead of processes (no worker set-up)."""

    def __init__(self, max_workers, mp_context=None, initializer=None, initargs=()) -> None:
        super().__init__(max_workers=max_workers)


def test_the_queue_keeps_its_limit_in_flight_and_starts_nothing_after_a_failure(monkeypatch, tmp_path) -> None:
    lock, flight, peaks, finished = threading.Lock(), [0], [], []

    def work(cfg, gated=False):  # a run: how many were in flight beside it, a failure for a key named "bad"
        with lock:
            flight[0] += 1
            peaks.append((cfg.phase, flight[0]))
        time.sleep(0.3)
        with lock:
            flight[0] -= 1
        return ({"seed": 0}, None, 0.0) if cfg.name != "bad" else (None, ("it broke", 2), 0.0)

    monkeypatch.setattr(study_runs, "ProcessPoolExecutor", _ThreadPool)
    monkeypatch.setattr(study_runs, "_work", work)

    def job(name: str, phase: int) -> tuple:
        return name, SimpleNamespace(out=str(tmp_path / name), name=name, phase=phase)

    runs = study_runs.RunQueue(study_runs.Scheduling(2, 1), None, lambda key, *rest: finished.append(key))
    runs.add([job("a", 1), job("b", 1), job("c", 1)], limit=1)  # beside the study's stages: one at a time
    while len(finished) < 3:
        time.sleep(0.05)
        runs.poll()
    runs.add([job("d", 2), job("e", 2)], limit=2)
    runs.finish()
    assert finished[:3] == ["a", "b", "c"] and sorted(finished[3:]) == ["d", "e"]  # d and e go side by side
    assert max(n for phase, n in peaks if phase == 1) == 1 and max(n for phase, n in peaks if phase == 2) == 2
    failing = study_runs.RunQueue(study_runs.Scheduling(2, 1), None, lambda *args: None)
    peaks.clear()
    with pytest.raises(RunError, match="^study run bad: it broke$"):
        failing.add([job("bad", 1), job("never", 1)], limit=1)
        failing.finish()
    assert [phase for phase, _ in peaks] == [1]  # "never" was not started


def test_a_gated_run_waits_for_the_test_maps_and_stops_with_the_study(monkeypatch, tmp_path) -> None:
    runs = study_runs.RunQueue(study_runs.Scheduling(2, 1), None, lambda *args: None)
    monkeypatch.setattr(study_runs, "_GATE", runs.gate)  # a worker's copy (set by _init_worker)
    waiting = threading.Thread(target=study_runs._await_gate)
    waiting.start()
    time.sleep(3 * study_runs._POLL_S)
    assert waiting.is_alive()  # no test maps yet
    runs.open_gate()
    waiting.join(10 * study_runs._POLL_S)
    assert not waiting.is_alive()
    runs._stop(None)
    assert runs.gate.value == study_runs.OPEN  # a study stopping after its maps lets the runs evaluate
    stopped = study_runs.RunQueue(study_runs.Scheduling(2, 1), None, lambda *args: None)
    monkeypatch.setattr(study_runs, "_GATE", stopped.gate)
    stopped._stop(None)  # the study failed before its test maps: the waiting runs stop in one line
    with pytest.raises(RunError, match="^the study stopped before its test maps existed; run it again"):
        study_runs._await_gate()
    alone = study_runs.RunQueue(study_runs.Scheduling(1, 1), None, lambda *args: None)
    with pytest.raises(ValueError, match="gated run cannot go in the study's own process"):
        alone.add([("x", SimpleNamespace(out=str(tmp_path / "x")))], 1, gated=True)
