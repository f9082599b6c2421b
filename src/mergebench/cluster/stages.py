"""One stage of the graph, run in a worker process: the same Pipeline call a local run makes.

Every executor ships the same two plain dicts to a worker, the run's settings and the stage, and
calls :func:`run_stage`. The stage calls the :class:`~mergebench.pipeline.Pipeline` method that
produces its artifact; the artifacts it reads were built by its upstream stages and are found in
the shared cache, so a stage is idempotent: a retried stage finds its own artifact if the first
attempt finished, and builds it again from scratch if the attempt died before the rename.

What comes back is small: the cache events of the stage (what it built and how long it took),
where it ran, and for a case its :class:`~mergebench.results.CaseResult` as JSON, as results
travel from xdist workers. A failure comes back as :class:`StageFailed`, carrying the cause's type,
message and the worker's traceback as text (the exception itself may not unpickle at the driver).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mergebench.cluster.events import EventWriter
from mergebench.cluster.graph import Stage


@dataclass(frozen=True)
class RunSettings:
    """What a worker needs to rebuild the driver's run context (the ``--mb-*`` options that shape stages)."""

    cache_root: str
    run_id: str
    device: str = "auto"
    seed: int = 0
    model_roots: tuple[str, ...] = ()
    allow_pickle: bool = False
    eval_limit: int | None = None
    batch_size: int = 16
    backend: str = "hf"
    search: str = "none"
    judge: dict[str, Any] = field(default_factory=dict)  # JudgeSettings' fields (the API key stays in the worker's environment)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSettings":
        values = dict(data)
        values["model_roots"] = tuple(values.get("model_roots", ()))
        return cls(**values)

    @property
    def run_dir(self) -> Path:
        return Path(self.cache_root) / "cluster" / "runs" / self.run_id

    @property
    def events_dir(self) -> Path:
        return self.run_dir / "events"


class StageFailed(Exception):
    """A stage that raised on a worker: what failed, where, and why (with the remote traceback as text)."""

    def __init__(self, stage_id: str, label: str, host: str, error_type: str, message: str, remote_traceback: str,
                 usage: bool = False) -> None:
        super().__init__(stage_id, label, host, error_type, message, remote_traceback, usage)
        self.stage_id, self.label, self.host = stage_id, label, host
        self.error_type, self.message, self.remote_traceback, self.usage = error_type, message, remote_traceback, usage

    def __str__(self) -> str:
        return f"{self.label} failed on {self.host}: {self.error_type}: {self.message}"


def node_name() -> str:
    return socket.gethostname()


_pipelines: dict[tuple[str, str], Any] = {}


def _pipeline(settings: RunSettings, device: str):
    """This process's Pipeline for the run (kept: its resolved bases and loaded models serve the next stage)."""
    key = (repr(sorted(settings.to_dict().items())), device)
    if key not in _pipelines:
        from mergebench import plugin_manager
        from mergebench.cache import ArtifactCache
        from mergebench.evaluation.judge import JudgeSettings
        from mergebench.pipeline import Pipeline, RunContext

        context = RunContext(
            cache=ArtifactCache(settings.cache_root), device=device, seed=settings.seed,
            model_roots=tuple(Path(p) for p in settings.model_roots), allow_pickle=settings.allow_pickle,
            eval_limit=settings.eval_limit, batch_size=settings.batch_size, backend=settings.backend,
            search=settings.search, judge=JudgeSettings(**settings.judge) if settings.judge else JudgeSettings.from_env(),
        )
        _pipelines.clear()  # one run per worker process at a time: do not keep another run's models loaded
        _pipelines[key] = Pipeline(context, plugin_manager.registries())
    return _pipelines[key]


def stage_device(settings: RunSettings, gpu: bool) -> str:
    """The device a stage runs on: the run's device when the stage holds a GPU, else the CPU.

    An engine that grants a GPU makes it the only visible one, so ``cuda:N`` becomes ``cuda``.
    """
    if not gpu:
        return "cpu"
    from mergebench.devices import resolve_device

    requested = settings.device.strip().lower()
    return resolve_device("cuda" if requested.startswith("cuda") else requested)


def _model_ref(pipeline, stage: Stage):
    """The checkpoint an ``evaluate`` stage scores: its target's artifact (built upstream, so a cache hit)."""
    kind, _, name = stage.target.partition(":")
    if kind == "checkpoint":
        return pipeline.checkpoint(name)
    model = pipeline.registries.models.get(stage.model)
    if kind == "base":
        return pipeline.base(model)
    if kind == "train":
        return pipeline.mtl(model) if stage.domain == "mtl" else pipeline.expert(model, stage.domain)
    return _merged(pipeline, stage)[0]


def _merged(pipeline, stage: Stage):
    model = pipeline.registries.models.get(stage.model)
    method = pipeline.registries.methods.get(stage.method)
    params = method.resolve_params(dict(stage.params))
    if pipeline.context.search != "none":
        params, _ = pipeline.search(model, method, dict(stage.params))
    return pipeline.merged(model, method, params)


def _statistics(pipeline, stage: Stage):
    model = pipeline.registries.models.get(stage.model)
    method = pipeline.registries.methods.get(stage.method)
    base = pipeline.base(model)
    return pipeline.statistics(model, method, method.resolve_params(dict(stage.params)), base, pipeline.experts(model, base))


def _case(pipeline, stage: Stage) -> dict[str, Any]:
    result = pipeline.run_case(stage.case)
    result.device = {"device": pipeline.context.device, "node": node_name(), "worker": f"pid {os.getpid()}"}
    return result.to_dict()


_STAGES: dict[str, Callable[[Any, Stage], Any]] = {
    "base": lambda p, s: p.base(p.registries.models.get(s.model)),
    "train": lambda p, s: (p.mtl(p.registries.models.get(s.model)) if s.domain == "mtl"
                           else p.expert(p.registries.models.get(s.model), s.domain)),
    "statistics": _statistics,
    "search": lambda p, s: p.search(p.registries.models.get(s.model), p.registries.methods.get(s.method), dict(s.params)),
    "merge": _merged,
    "evaluate": lambda p, s: p.evaluate(_model_ref(p, s), p.registries.tasks.get(s.task)),
    "case": _case,
}


def run_stage(settings: dict[str, Any], stage: dict[str, Any], gpu: bool = False) -> dict[str, Any]:
    """Run one stage here and say what it did; raise :class:`StageFailed` if it failed."""
    from mergebench import progress
    from mergebench.cache import leftovers
    from mergebench.errors import MergebenchError

    run, step = RunSettings.from_dict(settings), Stage.from_dict(stage)
    host, pid = node_name(), os.getpid()
    events = EventWriter(run.events_dir, f"{leftovers.host()}-{pid}")
    events.emit(ev="stage", state="start", id=step.id, node=host, pid=pid)
    started = time.perf_counter()
    try:
        leftovers.sweep_cache_tmp(Path(run.cache_root))  # a retried stage's dead first attempt, if it ran here
        device = stage_device(run, gpu)
        pipeline = _pipeline(run, device)
        first = len(pipeline.cache.events)
        with progress.use_sink(events):
            value = _STAGES[step.kind](pipeline, step)
        built = [e.as_dict() for e in pipeline.cache.events[first:]]
    except Exception as error:
        events.emit(ev="stage", state="end", id=step.id, node=host, pid=pid, ok=False,
                    error=f"{type(error).__name__}: {error}")
        raise StageFailed(step.id, step.label, host, type(error).__name__, str(error), traceback.format_exc(),
                          usage=isinstance(error, MergebenchError)) from None
    seconds = time.perf_counter() - started
    events.emit(ev="stage", state="end", id=step.id, node=host, pid=pid, ok=True, seconds=round(seconds, 3))
    return {"stage": step.id, "node": host, "pid": pid, "device": device, "seconds": round(seconds, 3),
            "events": built, "result": value if step.kind == "case" else None}


def run_stages(settings: dict[str, Any], stages: list[dict[str, Any]], gpu: bool = False,
               threads: int | None = None) -> list[Any]:
    """Several independent stages in one job (a Slurm job's body): each one's outcome, or its
    :class:`StageFailed`, returned rather than raised so that one failure leaves the others' results.

    ``threads`` is the CPUs the job asked for: torch would otherwise start a thread per core of the
    node, oversubscribing the cores Slurm gave the node's other jobs (Ray sets the same from ``num_cpus``)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    outcomes: list[Any] = []
    for stage in stages:
        try:
            outcomes.append(run_stage(settings, stage, gpu))
        except StageFailed as failure:
            outcomes.append(failure)
    return outcomes
