"""Stages as Slurm jobs through submitit, in waves: a wave is submitted when the one before it has finished.

Waves are the stage graph cut by depth (bases; experts and the bases' evaluations; statistics,
searches and merges; evaluations; cases): every stage's inputs are in earlier waves, so no job
needs Slurm's ``--dependency``, and submitit's local executor (jobs as processes on this machine)
runs the same code for tests. The price against Ray is idle time at each wave's end. Evaluations
of one model share a job (the model loads once); ``--mb-slurm-group model`` puts every stage of a
model and wave into one job, for sites that cap the number of jobs. A job that dies (node failure,
pre-emption, time limit) is resubmitted up to ``--mb-retries`` times; a stage that raises fails
its own cases only, and the stages downstream of it are not submitted.

Partition, time, GPUs and account come from ``--mb-slurm-*`` options or ``--mb-slurm-config FILE``
(TOML, a ``[slurm]`` table; options win); any other submitit Slurm parameter goes through
``--mb-slurm-option KEY=VALUE``. submitit's own check of those names runs before anything is
submitted. Memory per job is sized from the model (:mod:`.resources`).
"""

from __future__ import annotations

import math
import os
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergebench.cluster.graph import Stage, StageGraph
from mergebench.cluster.resources import GIB, Request, machine_memory
from mergebench.cluster.stages import RunSettings
from mergebench.errors import UsageError

INSTALL_HINT = "submitit is not installed: pip install 'mergebench[cluster]'"
PROBE_TIMEOUT = 3600.0


def add_options(group) -> None:
    group.addoption("--mb-slurm-partition", default=None, metavar="NAME", help="Slurm partition of every job")
    group.addoption("--mb-slurm-time", default=None, metavar="TIME",
                    help="time limit of each job: minutes, H:MM:SS or D-HH:MM:SS (default 240 minutes)")
    group.addoption("--mb-slurm-gpus", type=int, default=None, metavar="N",
                    help="GPUs per job for finetuning, statistics, search and evaluation (default 0: CPU only)")
    group.addoption("--mb-slurm-account", default=None, metavar="NAME", help="Slurm account to charge")
    group.addoption("--mb-slurm-option", action="append", default=[], metavar="KEY=VALUE",
                    help="any other submitit Slurm parameter (qos=high, constraint=a100, exclude=node3; repeatable)")
    group.addoption("--mb-slurm-config", default=None, metavar="FILE",
                    help="TOML file with a [slurm] table of the same settings (partition, time, gpus, account, any "
                         "submitit parameter); options override it")
    group.addoption("--mb-slurm-cluster", default="slurm", choices=("slurm", "local"),
                    help="slurm (sbatch, the default) or local (submitit's local executor: jobs as processes here)")
    group.addoption("--mb-slurm-group", default="stage", choices=("stage", "model"),
                    help="one job per stage (evaluations of a model share one), or per model and wave")
    group.addoption("--mb-slurm-parallel", type=int, default=None, metavar="N",
                    help="most jobs in flight at once (default 256 on Slurm, the CPU count with --mb-slurm-cluster local)")


@dataclass(frozen=True)
class SlurmSettings:
    cluster: str = "slurm"
    partition: str | None = None
    time_minutes: int = 240
    gpus: int = 0
    account: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    group: str = "stage"
    parallel: int = 256
    folder: str | None = None  # job logs; default <cache>/cluster/runs/<run>/slurm, removed with the run

    def job_parameters(self, request: Request, name: str) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for one job asking for ``request``."""
        params: dict[str, Any] = {"job_name": name, "time": self.time_minutes, "cpus_per_task": job_cpus(request),
                                  "mem": f"{max(1, math.ceil(request.memory / GIB))}G"}
        if request.gpus:
            params["gpus_per_node"] = int(math.ceil(request.gpus))
        if self.partition:
            params["partition"] = self.partition
        if self.account:
            params["account"] = self.account
        params.update(self.extra)
        return params


def job_cpus(request: Request) -> int:
    """The CPUs a job asks Slurm for, and so the torch threads it runs."""
    return max(1, math.ceil(request.cpus))


_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<first>\d+)(?::(?P<minutes>\d+):(?P<seconds>\d+))?$")


def parse_time(text: str | int) -> int:
    """Minutes from ``90``, ``"1:30:00"``, ``"2-00:00:00"``; a clear error otherwise."""
    match = _TIME.match(str(text).strip())
    if match is None or (match["days"] and match["minutes"] is None):
        raise UsageError(f"--mb-slurm-time {text!r} is not minutes, H:MM:SS or D-HH:MM:SS")
    if match["minutes"] is None:
        minutes = int(match["first"])
    else:
        minutes = int(match["first"]) * 60 + int(match["minutes"]) + math.ceil(int(match["seconds"]) / 60)
    minutes += int(match["days"] or 0) * 1440
    if minutes <= 0:
        raise UsageError(f"--mb-slurm-time {text!r} must be positive")
    return minutes


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def read_config(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UsageError(f"--mb-slurm-config {path}: reading TOML on Python 3.10 needs `pip install tomli`; "
                             "or pass the settings as --mb-slurm-* options") from None
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"--mb-slurm-config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--mb-slurm-config {path} is not valid TOML: {exc}") from None
    table = data.get("slurm")
    if not isinstance(table, dict):
        raise UsageError(f"--mb-slurm-config {path} has no [slurm] table")
    return dict(table)


def slurm_settings(config) -> SlurmSettings:
    """The Slurm settings of a pytest run: the config file, overridden by the options."""
    table = read_config(config.getoption("mb_slurm_config")) if config.getoption("mb_slurm_config") else {}
    for item in config.getoption("mb_slurm_option"):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--mb-slurm-option {item!r} is not KEY=VALUE")
        table[key.strip()] = _value(value.strip())
    for name in ("partition", "time", "gpus", "account"):
        given = config.getoption(f"mb_slurm_{name}")
        if given is not None:
            table[name] = given
    cluster = config.getoption("mb_slurm_cluster")
    parallel = config.getoption("mb_slurm_parallel") or (os.cpu_count() or 1 if cluster == "local" else 256)
    if parallel < 1:
        raise UsageError("--mb-slurm-parallel must be 1 or more")
    gpus = table.pop("gpus", 0)
    if not isinstance(gpus, int) or gpus < 0:
        raise UsageError(f"Slurm gpus must be a whole number of GPUs, got {gpus!r}")
    return SlurmSettings(cluster=cluster, partition=table.pop("partition", None),
                         time_minutes=parse_time(table.pop("time", 240)), gpus=gpus, account=table.pop("account", None),
                         folder=table.pop("folder", None), extra=table, group=config.getoption("mb_slurm_group"), parallel=parallel)


class SlurmExecutor:
    def __init__(self, settings: SlurmSettings, retries: int = 3) -> None:
        self.settings = settings
        self.retries = retries
        self.name = "Slurm" if settings.cluster == "slurm" else "submitit local"
        self._executor = None
        self._folder: Path | None = None
        self._done: queue.Queue = queue.Queue()
        self._finished: set[str] = set()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._jobs: dict[Any, tuple[list[Stage], int]] = {}
        self._thread: threading.Thread | None = None

    # -- before any work ----------------------------------------------------------------------
    def start(self) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UsageError(INSTALL_HINT) from None
        if self.settings.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UsageError("--mb-executor slurm submits with sbatch, which is not on this machine's PATH: run from a Slurm "
                             "login node, or use --mb-slurm-cluster local to run the jobs as processes here")
        self.check_parameters()

    def check_parameters(self) -> None:
        """submitit's own validation of the Slurm parameters (names and sbatch syntax), for a GPU and a CPU job.

        These are the two checks ``submitit.SlurmExecutor.update_parameters`` makes; its constructor
        wants ``srun`` on the PATH, which the driver of a local test (or a typo found early) lacks.
        """
        from submitit.slurm.slurm import _get_default_parameters, _make_sbatch_string

        for request in (Request(gpus=1.0 if self.settings.gpus else 0.0), Request()):
            parameters = self.settings.job_parameters(request, "mergebench-check")
            try:
                unknown = sorted(set(parameters) - set(_get_default_parameters()))
                if unknown:
                    raise ValueError(f"Unavailable parameter(s): {unknown}")
                _make_sbatch_string(command="true", folder="/nonexistent/mergebench-check", **parameters)
            except (ValueError, TypeError) as exc:
                first = str(exc).splitlines()[0]
                raise UsageError(f"submitit rejects the Slurm settings: {first}; fix the --mb-slurm-option/"
                                 "--mb-slurm-config entry (names are submitit's SlurmExecutor parameters: partition, "
                                 "time, gpus_per_node, account, qos, constraint, mem, cpus_per_task, ...)") from None

    def _make_executor(self, folder: Path):
        import submitit

        folder.mkdir(parents=True, exist_ok=True)
        if self.settings.cluster == "local":
            executor = submitit.LocalExecutor(folder=str(folder))
            executor.update_parameters(timeout_min=self.settings.time_minutes)
            return executor
        return submitit.SlurmExecutor(folder=str(folder))

    def _parameters(self, request: Request, name: str) -> dict[str, Any]:
        if self.settings.cluster == "local":
            return {"timeout_min": self.settings.time_minutes, "gpus_per_node": int(math.ceil(request.gpus))}
        return self.settings.job_parameters(request, name)

    def gpus(self) -> float:
        if self.settings.cluster == "local":
            from mergebench.pytest_xdist import visible_gpus

            return float(len(visible_gpus()))
        return float(self.settings.gpus)

    def unfit(self, request: Request) -> str | None:
        if self.settings.cluster == "local":
            total = machine_memory()
            if total and request.memory > total:
                return f"this machine has {total / GIB:.1f} GiB"
        return None  # Slurm itself refuses a job no partition can hold, at submission

    # -- the probe ----------------------------------------------------------------------------
    def probe(self, cache_root: str, nonce: str, names: dict[str, list[str]]) -> list[dict[str, Any]]:
        from mergebench.cluster.probe import node_probe

        folder = Path(self.settings.folder or Path(cache_root) / "cluster" / "probes") / f"{nonce}-probe-job"
        executor = self._make_executor(folder)
        executor.update_parameters(**self._parameters(Request(), "mergebench-probe"))
        job = executor.submit(node_probe, cache_root, nonce, names)
        try:
            return [job.result()]
        except Exception as exc:
            raise UsageError(f"the cache probe job {job.job_id} did not run: {str(exc).splitlines()[0] if str(exc) else exc}; "
                             f"its logs are in {folder}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- the graph ------------------------------------------------------------------------------
    def submit(self, graph: StageGraph, settings: RunSettings, requests: dict[str, Request]) -> None:
        self._folder = Path(self.settings.folder) if self.settings.folder else settings.run_dir / "slurm"
        self._executor = self._make_executor(self._folder)
        self._thread = threading.Thread(target=self._run_waves, args=(graph, settings.to_dict(), requests),
                                        name="mergebench-slurm-waves", daemon=True)
        self._thread.start()

    def _groups(self, wave: list[Stage], requests: dict[str, Request]) -> list[tuple[list[Stage], Request]]:
        grouped: dict[Any, list[Stage]] = {}
        for stage in wave:
            if self.settings.group == "model":
                key: Any = stage.model
            else:
                key = ("evaluate", stage.target) if stage.kind == "evaluate" else stage.id
            grouped.setdefault(key, []).append(stage)
        result = []
        for stages in grouped.values():
            asked = [requests[s.id] for s in stages]
            request = Request(max(r.cpus for r in asked), max(r.gpus for r in asked), max(r.memory for r in asked))
            result.append((stages, request))
        return result

    def _run_waves(self, graph: StageGraph, settings: dict[str, Any], requests: dict[str, Request]) -> None:
        failed: dict[str, BaseException] = {}
        try:
            for wave in graph.waves():
                ready = []
                for stage in wave:
                    cause = next((failed[d] for d in stage.deps if d in failed), None)
                    if cause is not None:  # as under Ray, a stage downstream of a failure fails with its cause
                        failed[stage.id] = cause
                        self._emit(stage.id, cause)
                    else:
                        ready.append(stage)
                self._run_wave(self._groups(ready, requests), settings, failed)
                if self._stop.is_set():
                    return
        except BaseException as exc:  # a bug or a submission error: fail what is left rather than hang the items
            from mergebench.cluster.run import StageLost

            for stage in graph.stages.values():
                if stage.id not in self._finished:
                    self._emit(stage.id, StageLost(stage.id, stage.label, f"the Slurm driver thread stopped: {exc}"))

    def _run_wave(self, groups: list[tuple[list[Stage], Request]], settings: dict[str, Any],
                  failed: dict[str, BaseException]) -> None:
        from mergebench.cluster.run import StageLost
        from mergebench.cluster.stages import run_stages

        todo = [(stages, request, 0) for stages, request in groups]
        running: dict[Any, tuple[list[Stage], Request, int]] = {}
        while (todo or running) and not self._stop.is_set():
            while todo and len(running) < self.settings.parallel:
                stages, request, attempt = todo.pop(0)
                self._executor.update_parameters(**self._parameters(request, f"mb-{stages[0].kind}"))
                job = self._executor.submit(run_stages, settings, [s.to_dict() for s in stages], bool(request.gpus),
                                            job_cpus(request))
                running[job] = (stages, request, attempt)
                self._jobs[job] = (stages, attempt)
            for job in [j for j in running if j.done()]:
                stages, request, attempt = running.pop(job)
                self._jobs.pop(job, None)
                try:
                    outcomes = job.result()
                except Exception as exc:  # the job died: node failure, time limit, pre-emption, cancelled
                    if attempt < self.retries and not self._stop.is_set():
                        todo.append((stages, request, attempt + 1))
                        continue
                    outcomes = [StageLost(s.id, s.label, f"job {job.job_id} failed {attempt + 1} times: "
                                                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                                for s in stages]
                for stage, outcome in zip(stages, outcomes):
                    if isinstance(outcome, BaseException):
                        failed[stage.id] = outcome
                    self._emit(stage.id, outcome)
            time.sleep(0.5)

    def _emit(self, stage_id: str, outcome: Any) -> None:
        with self._changed:
            self._finished.add(stage_id)
            self._done.put((stage_id, outcome))
            self._changed.notify_all()

    def poll(self) -> list[tuple[str, Any]]:
        found = []
        while True:
            try:
                found.append(self._done.get_nowait())
            except queue.Empty:
                return found

    def wait(self, stage_id: str, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: stage_id in self._finished, timeout=timeout)

    # -- the end ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        self._stop.set()
        for job in list(self._jobs):
            try:
                job.cancel(check=False)
            except Exception:  # already gone
                pass

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

