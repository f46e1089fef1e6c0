"""A study's Re-ID runs, one at a time in this process or side by side in spawned processes (``study.workers``).

The runs of a study are independent once its attribute net and heat-map caches exist, and small CPU batches
scale poorly with intra-op threads, so two 1-thread runs do more work on 2 cores than one 2-thread run. A
run's figures depend on its thread count, never on the schedule: a run in a worker at 1 thread equals the
same run in this process at 1 thread, to the bit. Workers are spawned (torch and fork do not mix); a failing
run is one line naming it (:class:`RunError`); a finished run (``result.json``) is read, never rerun. A script
that runs a study with workers needs the ``if __name__ == "__main__":`` guard: spawn imports it again.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import torch

from sangal.config import Config
from sangal.config.schema import available_cores
from sangal.errors import SangalError
from sangal.experiments.noise import compact_per_query
from sangal.runtime.distributed import resolve_device
from sangal.store.files import write_json_atomic
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)

__all__ = ["METRICS", "RunError", "Scheduling", "run_all", "run_one", "scheduling", "stage_timings"]

METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")

#: What ``study.workers=0`` means on CPU: at most this many runs side by side.
AUTO_WORKERS = 2


class RunError(SangalError):
    """A study run in a worker process failed or was stopped: its one-line message, prefixed with the run."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Scheduling:
    """How many runs go side by side (``workers``) and the torch threads each run uses (``threads``)."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers, self.threads = workers, threads

    def record(self) -> dict[str, int]:
        """study.json ``environment`` keys: a run's figures are comparable bit for bit only at equal threads."""
        return {"study_workers": self.workers, "run_threads": self.threads}


def scheduling(cfg: Config) -> Scheduling:
    """``study.workers`` resolved: 0 is min(2, cores) on CPU and 1 on CUDA; with 1 the runs keep this process's
    threads, with more each worker gets cores // workers threads (at least one)."""
    workers = cfg.study.workers
    if workers == 0:
        on_cuda = resolve_device(cfg.train.device).type == "cuda"
        workers = 1 if on_cuda else min(AUTO_WORKERS, available_cores())
    if workers == 1:
        return Scheduling(1, torch.get_num_threads())
    return Scheduling(workers, max(1, available_cores() // workers))


def run_one(run_cfg: Config, train_reid: Callable) -> dict:
    """Train (or resume, or reuse) one run; its metrics in percent, its pairing hashes and its per-query results."""
    result_file = Path(run_cfg.out) / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    last = default_paths(run_cfg)["reid_run"] / "checkpoints" / "last"
    metrics = train_reid(run_cfg, resume=last.exists())
    result = {"seed": run_cfg.train.seed, **{k: 100.0 * metrics[k] for k in METRICS}}
    if "reid_attr_mA" in metrics:
        result["reid_attr_mA"] = 100.0 * metrics["reid_attr_mA"]
    result["cmc"] = [100.0 * v for v in metrics["cmc"][:20]]
    result["pairing"] = metrics.get("pairing", {})
    result["per_query"] = compact_per_query(metrics["per_query"])
    write_json_atomic(result_file, result)
    return result


#: (run key, its config); ``done(key, result, wall seconds, CPU seconds)`` is called as each run finishes.
Job = tuple[str, Config]
Done = Callable[[str, dict, float, float], None]


def run_all(jobs: list[Job], plan: Scheduling, train_reid: Callable, done: Done) -> None:
    """Every job's run, in order in this process (``plan.workers`` 1) or ``plan.workers`` at a time in spawned
    processes; finished runs are read here either way. A worker's failure stops the study as a RunError."""
    todo = []
    for key, cfg in jobs:
        if plan.workers == 1 or (Path(cfg.out) / "result.json").is_file():
            t, cpu = time.time(), time.process_time()
            result = run_one(cfg, train_reid)
            done(key, result, time.time() - t, time.process_time() - cpu)
        else:
            todo.append((key, cfg))
    if todo:
        _run_in_workers(todo, plan, done)


def _run_in_workers(jobs: list[Job], plan: Scheduling, done: Done) -> None:
    """``jobs`` in ``plan.workers`` spawned processes, no more submitted than there are workers (so that a
    stopped study starts no new run); the first failure, or a Ctrl-C, waits for the runs under way."""
    queue = multiprocessing.get_context("spawn").Queue()
    started: dict[Future, tuple[str, float]] = {}
    pending, failure = list(jobs), None
    with _log_listener(queue), ProcessPoolExecutor(
            max_workers=plan.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(plan.threads, queue, logging.getLogger().getEffectiveLevel(), os.getpid())) as pool:
        try:
            while pending or started:
                while pending and len(started) < plan.workers and failure is None:
                    key, cfg = pending.pop(0)
                    started[pool.submit(_work, cfg)] = (key, time.time())
                if not started:
                    break
                finished, _ = wait(list(started), return_when=FIRST_COMPLETED)
                for future in finished:
                    key, t = started.pop(future)
                    failure = failure or _collect(future, key, t, done)
        except KeyboardInterrupt:  # the workers got the Ctrl-C too: each writes its checkpoint and stops
            failure = failure or _drain(started, done)
            failure = failure or RunError("study interrupted; run it again to resume (finished runs are kept)", 130)
    if failure is not None:
        raise failure


def _drain(started: dict[Future, tuple[str, float]], done: Done) -> RunError | None:
    """Wait for the runs under way after a Ctrl-C; the first one's error (their stop), if any."""
    failure = None
    for future, (key, t) in started.items():
        while True:
            try:
                failure = failure or _collect(future, key, t, done)
                break
            except KeyboardInterrupt:  # a second Ctrl-C: the workers give up as well; keep waiting for them
                continue
    return failure


def _collect(future: Future, key: str, t: float, done: Done) -> RunError | None:
    """Hand a finished run to ``done``, or its failure as one line naming the run."""
    try:
        result, error, cpu = future.result()
    except Exception as exc:  # the worker process died (killed, out of memory): no message of its own
        return RunError(f"study run {key}: its worker process ended ({type(exc).__name__}); run the study again "
                        "to resume")
    if error is not None:
        message, code = error
        return RunError(f"study run {key}: {message}", code)
    done(key, result, time.time() - t, cpu)
    return None


@contextmanager
def _log_listener(queue) -> Iterator[None]:
    """The workers' log records, handled here by this process's handlers (one format, one stream)."""
    listener = logging.handlers.QueueListener(queue, *logging.getLogger().handlers, respect_handler_level=True)
    listener.start()
    try:
        yield
    finally:
        listener.stop()


def _init_worker(threads: int, queue, level: int, parent: int) -> None:
    """A worker's set-up: its torch threads, its logs sent to the parent, Ctrl-C left to the run's own stop
    signal, and a SIGTERM to itself (the run checkpoints and stops) should the study's process end."""
    torch.set_num_threads(threads)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle: the study decides; a run installs its own handler
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    """SIGTERM this worker once the study's process is gone (its run then checkpoints and stops)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _work(run_cfg: Config) -> tuple[dict | None, tuple[str, int] | None, float]:
    """One run in a worker: (result, None, CPU seconds), or (None, (one-line message, exit code), CPU seconds)."""
    from sangal.train.reid import train_reid

    cpu = time.process_time()
    try:
        return run_one(run_cfg, train_reid), None, time.process_time() - cpu
    except SangalError as exc:
        return None, (str(exc), exc.exit_code), time.process_time() - cpu
    except KeyboardInterrupt:  # a second Ctrl-C inside the run
        return None, ("interrupted; run the study again to resume", 130), time.process_time() - cpu
    except Exception as exc:  # a bug: its traceback goes to the log, the study stops in one line
        log.exception("study run %s failed", run_cfg.out)
        return None, (f"{type(exc).__name__}: {exc} (traceback in the log above)", 1), time.process_time() - cpu


def stage_timings(timings: dict[str, float], runs: dict) -> dict[str, float]:
    """A study's ``timings`` with its per-run entries (the keys of ``runs["cpu_s"]``) replaced by the run stage's
    wall seconds, which is their sum only when the runs went one at a time."""
    stage = {k: v for k, v in timings.items() if k not in runs.get("cpu_s", {})}
    stage[f"Re-ID runs ({runs.get('study_workers', 1)} at a time)"] = runs.get("wall_s", 0.0)
    return stage
