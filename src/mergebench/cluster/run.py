"""The driver's side of a cluster run, whatever the engine: check, plan, submit, then hand each case its outcome.

:meth:`ClusterRun.start` does everything that can fail before work is scheduled: connect to the
engine, probe the shared cache from every node, build the stage graph, check that every stage's
resource request fits some node (a stage that needs a GPU on a cluster without one is refused
here, not left pending forever), and only then submit the whole graph. :meth:`ClusterRun.result`
then waits for one case, keeping the board of stages up to date meanwhile, and returns the case's
result with the builds credited as a serial run would credit them (each build to the first case,
in the run's order, that needs it), or raises what stopped it.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from mergebench.case import Case
from mergebench.cluster.board import Board
from mergebench.cluster.events import EventTail
from mergebench.cluster.graph import StageGraph, build_graph
from mergebench.cluster.probe import check_reports, remove_probes, write_driver_probe
from mergebench.cluster.resources import Request, gpu_required, request_for
from mergebench.cluster.stages import RunSettings
from mergebench.errors import UsageError


class StageLost(Exception):
    """A stage that did not finish for a reason outside it: its worker or node died more often than the
    retries allow, or it was cancelled."""

    def __init__(self, stage_id: str, label: str, message: str) -> None:
        super().__init__(stage_id, label, message)
        self.stage_id, self.label, self.message = stage_id, label, message

    def __str__(self) -> str:
        return f"{self.label} did not finish: {self.message}"


class Executor(Protocol):
    """What :class:`ClusterRun` needs of an engine (Ray: :mod:`.ray_executor`, Slurm: :mod:`.slurm_executor`)."""

    name: str

    def start(self) -> None: ...

    def gpus(self) -> float: ...

    def unfit(self, request: Request) -> str | None: ...

    def probe(self, cache_root: str, nonce: str, names: dict[str, list[str]]) -> list[dict[str, Any]]: ...

    def submit(self, graph: StageGraph, settings: RunSettings, requests: dict[str, Request]) -> None: ...

    def poll(self) -> list[tuple[str, Any]]: ...

    def wait(self, stage_id: str, timeout: float) -> None: ...

    def cancel(self) -> None: ...

    def shutdown(self) -> None: ...


class ClusterRun:
    def __init__(self, executor: Executor, settings: RunSettings, registries, cases: Sequence[Case]) -> None:
        self.executor = executor
        self.settings = settings
        self.registries = registries
        self.cases = list(cases)
        self.graph: StageGraph | None = None
        self.board: Board | None = None
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, BaseException] = {}
        self._tail = EventTail(settings.events_dir)
        self._first_case: dict[str, str] = {}
        self._submitted = False

    @classmethod
    def new_run_id(cls) -> str:
        return uuid.uuid4().hex[:12]

    # -- before any work ----------------------------------------------------------------------
    def start(self) -> None:
        self.executor.start()
        # resources first: refusing a GPU stage on a CPU cluster needs no probe (which loads every node's methods)
        self.requests(build_graph(self.cases, self.registries, search=self.settings.search))
        cache_root = Path(self.settings.cache_root)
        names = {
            "models": sorted({c.model for c in self.cases}),
            "methods": sorted({c.method for c in self.cases if c.method in self.registries.methods}),
            "tasks": sorted({c.task for c in self.cases}),
        }
        nonce = uuid.uuid4().hex
        write_driver_probe(cache_root, nonce)
        try:
            reports = self.executor.probe(str(cache_root), nonce, names)
            check_reports(cache_root, nonce, reports, where=self.executor.name)
        finally:
            remove_probes(cache_root, nonce)
        data_aware = {m for report in reports for m in report["statistics"]}
        self.graph = build_graph(self.cases, self.registries, search=self.settings.search,
                                 computes_statistics=data_aware.__contains__)
        requests = self.requests(self.graph)
        self._first_case = self.graph.first_case_of()
        self.board = Board(self.graph)
        self.settings.events_dir.mkdir(parents=True, exist_ok=True)
        self.executor.submit(self.graph, self.settings, requests)
        self._submitted = True

    def requests(self, graph: StageGraph) -> dict[str, Request]:
        """Each stage's request, refusing stages no node of the cluster can take."""
        gpus = self.executor.gpus()
        requests: dict[str, Request] = {}
        checked: dict[Request, str | None] = {}
        for stage in graph.stages.values():
            if gpu_required(stage.kind, self.settings.device, self.settings.backend) and not gpus:
                why = (f"--mb-backend {self.settings.backend}" if self.settings.backend == "vllm" and stage.kind == "evaluate"
                       else f"--mb-device {self.settings.device}")
                raise UsageError(f"{stage.label} needs a GPU ({why}), but the {self.executor.name} cluster has none; "
                                 "add GPU nodes, or run with --mb-device cpu (or auto) and the hf backend")
            size = self.registries.models.get(stage.model).size
            request = requests[stage.id] = request_for(stage.kind, size, use_gpu=gpus > 0)
            if request not in checked:
                checked[request] = self.executor.unfit(request)
            if checked[request]:
                raise UsageError(f"no node of the {self.executor.name} cluster can run {stage.label}, which asks for "
                                 f"{request.describe()}: {checked[request]}")
        return requests

    # -- while items wait -----------------------------------------------------------------------
    def tick(self) -> tuple[list[tuple[str, str]], list[tuple[str, BaseException]]]:
        """Collect finished stages and workers' events; return new notes and new failures for the display."""
        failures = []
        for stage_id, outcome in self.executor.poll():
            if isinstance(outcome, BaseException):
                self.failures[stage_id] = outcome
                failures.append((stage_id, outcome))
            else:
                self.outcomes[stage_id] = outcome
            self.board.finish(stage_id, not isinstance(outcome, BaseException))
        notes = self.board.apply(self._tail.read())
        return notes, failures

    def result(self, case_id: str, on_tick: Callable[[list, list], None] = lambda notes, failures: None,
               interval: float = 0.5) -> dict[str, Any]:
        """The CaseResult (as a dict) of ``case_id`` once its stage is done; raises what stopped it.

        ``on_tick(notes, failures)`` is called after each look at the engine (every ``interval`` s at most).
        """
        stage_id = self.graph.cases[case_id]
        while True:
            on_tick(*self.tick())
            if stage_id in self.outcomes or stage_id in self.failures:
                break
            self.executor.wait(stage_id, interval)
        if stage_id in self.failures:
            raise self.failures[stage_id]
        return self._credit_builds(case_id, dict(self.outcomes[stage_id]["result"]))

    def _credit_builds(self, case_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Mark the artifacts built for this case (its first-needed stages) as built in its cache record."""
        stage_id = self.graph.cases[case_id]
        built: dict[tuple[str, str], dict[str, Any]] = {}
        for upstream in (*self.graph.upstream(stage_id), stage_id):
            if self._first_case.get(upstream) == case_id and upstream in self.outcomes:
                for event in self.outcomes[upstream]["events"]:
                    if not event["hit"]:
                        built[event["stage"], event["digest"]] = event
        artifacts = []
        for event in result.get("artifacts", []):
            artifacts.append(dict(built.pop((event["stage"], event["digest"]), event)))
        result["artifacts"] = list(built.values()) + artifacts
        return result

    # -- the end ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what has not finished (an interrupted or stopped session) and let go of the engine."""
        try:
            if self._submitted:
                self.executor.cancel()
        finally:
            self.executor.shutdown()
            shutil.rmtree(self.settings.run_dir, ignore_errors=True)

    def unfinished(self) -> int:
        return len(self.graph.stages) - len(self.board.finished) if self.graph is not None and self.board is not None else 0

    def busy_seconds(self) -> float:
        """Seconds the finished stages spent in their workers, summed (against wall time x workers: the overhead)."""
        return sum(outcome["seconds"] for outcome in self.outcomes.values())

    def nodes_used(self) -> dict[str, int]:
        """Stages per node that ran them (for the session's summary); an engine's node id tells apart nodes on one host."""
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            node = outcome["node"] + (f" ({outcome['node_id'][:8]})" if outcome.get("node_id") else "")
            counts[node] = counts.get(node, 0) + 1
        return counts
