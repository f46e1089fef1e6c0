"""A study's Re-ID runs, one at a time in this process or side by side in spawned processes (``study.workers``).

The runs of a study are independent once its attribute net and heat-map caches exist, and small CPU batches
scale poorly with intra-op threads, so two 1-thread runs do more work on 2 cores than one 2-thread run. The
runs that need neither (``id``, ``id+attr``) start with the study, workers - 1 at a time beside its own stages,
which then run at the workers' threads (:class:`RunQueue`, :func:`stage_threads`); the runs with test-time maps
start once their training maps exist and wait for the test maps (the gate) only to evaluate. A
run's figures depend on its thread count, never on the schedule: a run in a worker at 1 thread equals the
same run in this process at 1 thread, to the bit. Workers are spawned (torch and fork do not mix); a failing
run is one line naming it (:class:`RunError`); a finished run (``result.json``) is read, never rerun. A script
that runs a study with workers needs the ``if __name__ == "__main__":`` guard: spawn imports it again.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

from sangal.config import Config
from sangal.config.schema import available_cores
from sangal.errors import SangalError
from sangal.experiments.noise import compact_per_query
from sangal.runtime.distributed import resolve_device
from sangal.store.files import write_json_atomic
from sangal.store.paths import default_paths

log = logging.getLogger(__name__)

__all__ = ["METRICS", "RunError", "RunQueue", "Scheduling", "run_one", "run_queue", "scheduling", "stage_threads",
           "stage_timings"]

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
        """study.json ``environment`` keys: figures are comparable bit for bit only at equal threads. The study's
        own stages (attribute net, maps, step 0) run at the runs' threads (``stage_threads``), see
        :func:`stage_threads`."""
        return {"study_workers": self.workers, "run_threads": self.threads, "stage_threads": self.threads}


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

#: The gate of the runs that evaluate with the study's test maps: shut, open (the maps exist), or the study stopped.
SHUT, OPEN, STOPPED = 0, 1, -1

#: How often the scheduling thread looks for new jobs, and the study's process for finished runs (seconds).
_POLL_S = 0.5


class RunQueue:
    """A study's runs as the study hands them over. A finished run is read at once; the others are trained at
    once in this process (``plan.workers`` 1), or queued for ``plan.workers`` spawned processes that a thread of
    this process keeps fed (at most ``limit`` in flight) while the study goes on with its own stages. A gated
    run trains at once and evaluates after :meth:`open_gate`. ``done`` is only ever called in the study's thread
    (at ``add``, ``poll`` and ``finish``): it writes study.json."""

    def __init__(self, plan: Scheduling, train_reid: Callable, done: Done) -> None:
        self.plan, self.train_reid, self.done = plan, train_reid, done
        # the gate: shared memory the workers read; one at a time, a plain holder
        self.gate = (multiprocessing.get_context("spawn").Value("b", SHUT) if plan.workers > 1
                     else SimpleNamespace(value=SHUT))
        self.pending: list[tuple[str, Config, bool]] = []
        self.limit, self.closed, self.failure = 0, False, None
        self.finished: queue.Queue = queue.Queue()  # (key, result, wall, cpu) of each run a worker finished
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None

    def add(self, jobs: list[Job], limit: int, gated: bool = False) -> None:
        """Hand over ``jobs`` (in this order) with at most ``limit`` runs in flight from now on; ``gated``: their
        evaluations wait for :meth:`open_gate` (workers only: one at a time, a run would wait for itself)."""
        for key, cfg in jobs:
            if self.plan.workers == 1 or (Path(cfg.out) / "result.json").is_file():
                if gated and self.gate.value != OPEN and self.plan.workers == 1:
                    raise ValueError(f"run {key}: a gated run cannot go in the study's own process")
                t, cpu = time.time(), time.process_time()
                result = run_one(cfg, self.train_reid)
                self.done(key, result, time.time() - t, time.process_time() - cpu)
            else:
                with self.cond:
                    self.pending.append((key, cfg, gated))
        with self.cond:
            self.limit = max(self.limit, min(limit, self.plan.workers))
            if self.pending and self.thread is None:
                self.thread = threading.Thread(target=self._schedule, name="study-runs", daemon=True)
                self.thread.start()
            self.cond.notify_all()
        self.poll()

    def open_gate(self) -> None:
        """The test maps exist: the gated runs evaluate."""
        self.gate.value = OPEN

    def poll(self) -> None:
        """Hand the runs finished so far to ``done``; a failure among them stops the study as a RunError."""
        while True:
            try:
                self.done(*self.finished.get_nowait())
            except queue.Empty:
                break
        if self.failure is not None:
            raise self.failure

    def finish(self) -> None:
        """No more jobs: wait for every run (a Ctrl-C waits for the runs under way, which stop themselves)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        try:
            self._wait()
        except KeyboardInterrupt:  # the workers got the Ctrl-C too: each writes its checkpoint and stops
            self._stop(None)
            self._wait(patient=True)
            self._stop(RunError("study interrupted; run it again to resume (finished runs are kept)", 130))
        self.poll()

    def abandon(self) -> None:
        """The study stopped on its own error: start no run, wait for those under way and record them."""
        self._stop(None)
        self._wait(patient=True)
        try:
            self.poll()
        except RunError:  # the study's own error is the one to report
            pass

    def _stop(self, failure: RunError | None) -> None:
        """Start no more runs; ``failure`` is the study's unless a run failed first."""
        with self.cond:
            self.closed, self.pending = True, []
            self.failure = self.failure or failure
            if self.gate.value == SHUT:  # a gated run waiting for maps that will not come stops (training kept)
                self.gate.value = STOPPED
            self.cond.notify_all()

    def _wait(self, patient: bool = False) -> None:
        """Until the scheduling thread ends, handing finished runs to ``done`` (``patient``: Ctrl-C ignored)."""
        while self.thread is not None and self.thread.is_alive():
            try:
                self.thread.join(_POLL_S)
                while not self.finished.empty():
                    self.done(*self.finished.get_nowait())
            except KeyboardInterrupt:
                if not patient:
                    raise

    def _schedule(self) -> None:
        """The scheduling thread: the pool, fed up to ``limit``; ends once closed and every run is back."""
        plan, spawn = self.plan, multiprocessing.get_context("spawn")
        log_queue = spawn.Queue()
        try:
            setup = (plan.threads, log_queue, logging.getLogger().getEffectiveLevel(), os.getpid(), self.gate)
            with _log_listener(log_queue), ProcessPoolExecutor(
                    max_workers=plan.workers, mp_context=spawn, initializer=_init_worker, initargs=setup) as pool:
                self._feed(pool)
        except Exception as exc:  # the pool broke outside a run: one line, the study stops
            self._stop(RunError(f"study runs: the worker pool failed ({type(exc).__name__}: {exc}); run the study "
                                "again to resume"))

    def _feed(self, pool: ProcessPoolExecutor) -> None:
        """Submit pending runs while fewer than ``limit`` are in flight and nothing failed (so that a stopped
        study starts no new run); collect each finished one."""
        started: dict[Future, tuple[str, float]] = {}
        while True:
            with self.cond:
                while self.pending and len(started) < self.limit and self.failure is None:
                    key, cfg, gated = self.pending.pop(0)
                    started[pool.submit(_work, cfg, gated)] = (key, time.time())
                if not started:
                    if (self.closed and not self.pending) or self.failure is not None:
                        return
                    self.cond.wait(_POLL_S)
                    continue
            finished, _ = wait(list(started), timeout=_POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                key, t = started.pop(future)
                failure = _collect(future, key, t, self.finished.put)
                if failure is not None:
                    self._stop(failure)


@contextmanager
def run_queue(plan: Scheduling, train_reid: Callable, done: Done) -> Iterator[RunQueue]:
    """A :class:`RunQueue` whose runs are all back when the block ends: ``finish`` is the caller's, an error in
    the block waits for the runs under way (none starts) and is raised as it was."""
    runs = RunQueue(plan, train_reid, done)
    try:
        yield runs
    except BaseException:
        runs.abandon()
        raise


@contextmanager
def stage_threads(plan: Scheduling) -> Iterator[None]:
    """This process's torch threads for the study's own stages while its runs may go beside them: the runs'
    (``plan.threads``: cores // workers, so the cores are not oversubscribed); unchanged with one worker."""
    previous = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _collect(future: Future, key: str, t: float, done: Callable[[tuple], None]) -> RunError | None:
    """Hand a finished run's (key, result, wall, CPU seconds) to ``done``, or its failure as one line naming it."""
    try:
        result, error, cpu = future.result()
    except Exception as exc:  # the worker process died (killed, out of memory): no message of its own
        return RunError(f"study run {key}: its worker process ended ({type(exc).__name__}); run the study again "
                        "to resume")
    if error is not None:
        message, code = error
        return RunError(f"study run {key}: {message}", code)
    done((key, result, time.time() - t, cpu))
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


#: A worker's copy of :attr:`RunQueue.gate` (set by :func:`_init_worker`).
_GATE = None


def _init_worker(threads: int, queue, level: int, parent: int, gate) -> None:
    """A worker's set-up: its torch threads, its logs sent to the parent, Ctrl-C left to the run's own stop
    signal, a SIGTERM to itself (the run checkpoints and stops) should the study's process end, and the gate."""
    global _GATE
    _GATE = gate
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


def _await_gate() -> None:
    """A gated run's evaluation: wait until the study's test maps exist; a study that stopped first stops it (its
    training is kept: ``last`` is at the end of the schedule, so a resumed study only evaluates it)."""
    while _GATE.value == SHUT:
        time.sleep(_POLL_S)
    if _GATE.value == STOPPED:
        raise RunError("the study stopped before its test maps existed; run it again to evaluate the trained run")


def _work(run_cfg: Config, gated: bool = False) -> tuple[dict | None, tuple[str, int] | None, float]:
    """One run in a worker: (result, None, CPU seconds), or (None, (one-line message, exit code), CPU seconds);
    ``gated``: its evaluations wait for the study's test maps (:func:`_await_gate`)."""
    from sangal.train.reid import train_reid

    cpu = time.process_time()
    train = functools.partial(train_reid, before_evaluation=_await_gate) if gated else train_reid
    try:
        return run_one(run_cfg, train), None, time.process_time() - cpu
    except SangalError as exc:
        return None, (str(exc), exc.exit_code), time.process_time() - cpu
    except KeyboardInterrupt:  # a second Ctrl-C inside the run
        return None, ("interrupted; run the study again to resume", 130), time.process_time() - cpu
    except Exception as exc:  # a bug: its traceback goes to the log, the study stops in one line
        log.exception("study run %s failed", run_cfg.out)
        return None, (f"{type(exc).__name__}: {exc} (traceback in the log above)", 1), time.process_time() - cpu


def stage_timings(timings: dict[str, float], runs: dict) -> dict[str, float]:
    """A study's ``timings`` with its per-run entries (the keys of ``runs["cpu_s"]``) replaced by the wall seconds
    the run stage added to the other stages' (their sum only when the runs went one at a time; without the
    ``beside_stages_s`` in which runs went beside the attribute net, the maps and the localisation), so that
    the stages add up to the study's wall time."""
    stage = {k: v for k, v in timings.items() if k not in runs.get("cpu_s", {})}
    beside = runs.get("beside_stages_s", 0.0)
    label = f"Re-ID runs ({runs.get('study_workers', 1)} at a time{', after the maps' if beside else ''})"
    stage[label] = runs.get("wall_s", 0.0) - beside
    return stage
