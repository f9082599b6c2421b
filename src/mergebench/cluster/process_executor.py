"""Stages in a pool of worker processes on this machine: the stage graph without a cluster engine.

Why: on a CPU, two processes of one thread each get more done than one process of two threads
at every stage of the embedded run (measured on a 2-core AVX2-only AMD EPYC: training steps
1.23x, the log-likelihood tasks 1.41x, greedy decoding 1.36x in throughput; README, "Cold-run
time"), and the graph lets stages that do not depend on each other run together: a second
expert while the first trains, the base's evaluations beside the experts, one merged model's
evaluations beside another's. A serial run cannot use that; pytest-xdist splits *cases*, whose
workers then wait on each other's expert locks.

The driver keeps the graph and hands a worker a stage once every stage it reads has finished,
in the order that keeps the long ones off the tail (training first, cases last), preferring a
stage about the model the worker last held (it keeps its loaded models, as a serial run does).
Each worker runs ``cores // workers`` torch threads, or every core for a stage that has the
machine to itself (the base, a lone last expert) — the choice is made when the stage starts.
Sums split over threads differently, so an expert trained at one thread differs in its last bits
from one trained at two (as from one trained on another CPU); ``threads`` fixes the count for
every stage, which reproduces a serial run at that count bit for bit.
A worker that dies (killed, out of memory) is replaced and its stage run again, up to
``retries`` times; a stage that raises fails its own cases, and the stages downstream of it
fail with the same cause without running, as under Ray.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from mergebench.cluster.graph import KINDS, Stage, StageGraph
from mergebench.cluster.resources import GIB, Request, machine_memory
from mergebench.cluster.stages import RunSettings, StageFailed
from mergebench.errors import UsageError

POLL_SECONDS = 0.2
"""How often the scheduler looks for a dead worker when no stage has finished."""


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _worker_main(inbox, outbox, index: int) -> None:
    """A worker's loop: run each stage it is handed with the torch threads it is given, report, repeat."""
    from mergebench.cluster.stages import run_stage  # mergebench's import set OMP_WAIT_POLICY before torch loads

    while True:
        job = inbox.get()
        if job is None:
            return
        stage_id, settings, stage, threads = job
        import torch

        torch.set_num_threads(threads)
        try:
            outcome = run_stage(settings, stage, False)
            outcome["node_id"] = f"worker {index}"
            outbox.put((index, stage_id, outcome))
        except StageFailed as failure:
            outbox.put((index, stage_id, failure))
        except BaseException as error:  # run_stage wraps what a stage raises; this is the harness itself failing
            outbox.put((index, stage_id, StageFailed(stage_id, stage.get("label", stage_id), "this machine",
                                                     type(error).__name__, str(error), traceback.format_exc())))


@dataclass
class _Worker:
    index: int
    process: Any
    inbox: Any
    stage: str | None = None  # the stage it runs now
    model_key: str = ""  # what the last stage it ran was about (its loaded models serve the next such stage)


@dataclass
class _Plan:
    """The scheduler's view of the graph: what each stage still waits for, and who waits for it."""

    stages: dict[str, Stage]
    waiting: dict[str, int] = field(default_factory=dict)
    dependents: dict[str, list[str]] = field(default_factory=dict)
    ready: list[str] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: StageGraph) -> "_Plan":
        plan = cls(dict(graph.stages))
        for position, stage in enumerate(graph.stages.values()):
            plan.order[stage.id] = position
            plan.waiting[stage.id] = len(stage.deps)
            for dep in stage.deps:
                plan.dependents.setdefault(dep, []).append(stage.id)
            if not stage.deps:
                plan.ready.append(stage.id)
        return plan

    def finished(self, stage_id: str) -> None:
        for later in self.dependents.get(stage_id, ()):
            self.waiting[later] -= 1
            if self.waiting[later] == 0:
                self.ready.append(later)

    def downstream(self, stage_id: str) -> list[str]:
        """Every stage that reads ``stage_id``'s artifact, directly or not."""
        seen: set[str] = set()
        todo = list(self.dependents.get(stage_id, ()))
        while todo:
            later = todo.pop()
            if later not in seen:
                seen.add(later)
                todo.extend(self.dependents.get(later, ()))
        return sorted(seen, key=self.order.__getitem__)

    def take(self, model_key: str) -> str:
        """The ready stage to run next on a worker that last held ``model_key``."""
        def rank(stage_id: str) -> tuple:
            stage = self.stages[stage_id]
            return KINDS.index(stage.kind), model_key_of(stage) != model_key, self.order[stage_id]

        best = min(self.ready, key=rank)
        self.ready.remove(best)
        return best


def model_key_of(stage: Stage) -> str:
    """What a stage loads: the model an evaluation scores, else the stage's own artifact's model."""
    return stage.target if stage.kind == "evaluate" else f"{stage.kind}:{stage.id}"


class ProcessExecutor:
    """The :class:`~mergebench.cluster.run.Executor` of ``--mb-executor processes`` (see the module's docstring)."""

    name = "processes"

    def __init__(self, workers: int | None = None, retries: int = 3, cores: int | None = None,
                 threads: int | None = None) -> None:
        self.cores = cores or available_cores()
        self.workers = workers or self.cores
        if self.workers < 1:
            raise UsageError(f"--mb-workers must be 1 or more (got {self.workers})")
        if threads is not None and threads < 1:
            raise UsageError(f"--mb-worker-threads must be 1 or more (got {threads})")
        self.threads = threads
        self.retries = retries
        self._context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        self._outbox = None
        self._pool: list[_Worker] = []
        self._plan: _Plan | None = None
        self._settings: dict[str, Any] = {}
        self._attempts: dict[str, int] = {}
        self._finished: list[tuple[str, Any]] = []
        self._done: set[str] = set()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- before any work ----------------------------------------------------------------------
    def start(self) -> None:
        self._outbox = self._context.Queue()

    def gpus(self) -> float:
        return 0.0  # GPUs on one machine are pytest-xdist's (-n auto, one worker per GPU)

    def unfit(self, request: Request) -> str | None:
        memory = machine_memory()
        if request.gpus:
            return "the processes executor runs stages on this machine's CPUs; for GPUs use -n auto (pytest-xdist)"
        if memory and request.memory > memory:
            return f"this machine has {memory / GIB:.1f} GiB of memory"
        return None

    def probe(self, cache_root: str, nonce: str, names: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The workers share this machine's cache, so the driver's own look is the probe."""
        from mergebench.cluster.probe import node_probe

        report = node_probe(cache_root, nonce, names)
        report["node_id"] = "driver"
        return [report]

    def submit(self, graph: StageGraph, settings: RunSettings, requests: dict[str, Request]) -> None:
        self._plan = _Plan.of(graph)
        self._settings = settings.to_dict()
        self._pool = [self._spawn(i) for i in range(min(self.workers, max(1, len(graph.stages))))]
        self._thread = threading.Thread(target=self._schedule, name="mergebench-processes", daemon=True)
        self._thread.start()

    def _spawn(self, index: int) -> _Worker:
        inbox = self._context.Queue()
        process = self._context.Process(target=_worker_main, args=(inbox, self._outbox, index),
                                        name=f"mergebench-worker-{index}", daemon=True)
        process.start()
        return _Worker(index, process, inbox)

    # -- the scheduler thread -------------------------------------------------------------------
    def _schedule(self) -> None:
        try:
            while not self._stop.is_set() and len(self._done) < len(self._plan.stages):
                self._dispatch()
                try:
                    index, stage_id, outcome = self._outbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    self._replace_dead()
                    continue
                self._pool[index].stage = None
                self._record(stage_id, outcome)
        except BaseException as exc:  # a bug here must fail what is left, not hang the items waiting on it
            from mergebench.cluster.run import StageLost

            for stage_id, stage in self._plan.stages.items():
                if stage_id not in self._done:
                    self._emit(stage_id, StageLost(stage_id, stage.label, f"the processes scheduler stopped: {exc}"))

    def _dispatch(self) -> None:
        plan = self._plan
        for worker in self._pool:
            if worker.stage is not None or not plan.ready:
                continue
            stage_id = plan.take(worker.model_key)
            stage = plan.stages[stage_id]
            busy = sum(1 for w in self._pool if w.stage is not None)
            alone = busy == 0 and not plan.ready  # nothing else runs or could: give it the machine
            threads = self.threads or (self.cores if alone else max(1, self.cores // len(self._pool)))
            worker.stage, worker.model_key = stage_id, model_key_of(stage)
            self._attempts[stage_id] = self._attempts.get(stage_id, 0) + 1
            worker.inbox.put((stage_id, self._settings, stage.to_dict(), threads))

    def _record(self, stage_id: str, outcome: Any) -> None:
        self._emit(stage_id, outcome)
        if isinstance(outcome, BaseException):
            for later in self._plan.downstream(stage_id):  # as under Ray: downstream fails with the cause, unrun
                if later not in self._done:
                    self._emit(later, outcome)
        else:
            self._plan.finished(stage_id)

    def _replace_dead(self) -> None:
        from mergebench.cluster.run import StageLost

        for position, worker in enumerate(self._pool):
            if worker.process.is_alive() or self._stop.is_set():
                continue
            stage_id, code = worker.stage, worker.process.exitcode
            self._pool[position] = self._spawn(worker.index)
            if stage_id is None:
                continue
            if self._attempts.get(stage_id, 0) <= self.retries:
                self._plan.ready.insert(0, stage_id)  # run again on a fresh worker (the cache sweeps the dead attempt)
            else:
                label = self._plan.stages[stage_id].label
                self._record(stage_id, StageLost(stage_id, label, f"its worker died (exit code {code}) "
                                                                  f"after {self.retries} retries"))

    def _emit(self, stage_id: str, outcome: Any) -> None:
        with self._lock:
            if stage_id in self._done:
                return
            self._done.add(stage_id)
            self._finished.append((stage_id, outcome))
            self._lock.notify_all()

    # -- what the driver asks ---------------------------------------------------------------------
    def poll(self) -> list[tuple[str, Any]]:
        with self._lock:
            finished, self._finished = self._finished, []
        return finished

    def wait(self, stage_id: str, timeout: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: stage_id in self._done or self._finished, timeout=timeout)

    # -- the end ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        self._stop.set()
        for worker in self._pool:
            if worker.process.is_alive():
                worker.process.kill()

    def shutdown(self) -> None:
        self._stop.set()
        for worker in self._pool:
            if worker.process.is_alive():
                worker.inbox.put(None)
        for worker in self._pool:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        if self._thread is not None:
            self._thread.join(timeout=5)
