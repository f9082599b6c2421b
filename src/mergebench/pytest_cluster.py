"""``--mb-executor processes|ray|slurm``: the selected cases' stages run on a pool of worker processes on this
machine or on a cluster; pytest stays the front end.

Collection, selection, reporting, ``--mb-json``, ``--mb-save``/``--mb-compare`` and the exit
status are pytest's and :mod:`~mergebench.pytest_results`' as in a local run. What changes is
where a case's work happens: when the run loop starts, the stage graph of every selected case is
checked and submitted at once (:class:`~mergebench.cluster.run.ClusterRun`), then each benchmark
item waits for its own case's stage and records its result, or fails with the remote cause. While
an item waits, the cluster's progress is shown by the local run's rules: Rich bars on an
interactive terminal, throttled plain lines otherwise.

Neither ``ray`` nor ``submitit`` is imported unless its executor is chosen and the run loop starts.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from mergebench.pytest_plugin import is_worker

session_key = pytest.StashKey["ClusterSession"]()
EXECUTORS = ("local", "processes", "ray", "slurm")


def pytest_addoption(parser: pytest.Parser) -> None:
    from mergebench.cluster.slurm_executor import add_options as add_slurm_options

    group = parser.getgroup("mergebench-cluster", "mergebench: running the grid on a cluster")
    group.addoption("--mb-executor", default="local", choices=EXECUTORS,
                    help="where stages run: local (this process, the default), processes (a pool of worker processes here, "
                         "stages in dependency order), ray (a Ray cluster), slurm (submitit)")
    group.addoption("--mb-workers", type=int, default=None, metavar="N",
                    help="worker processes of --mb-executor processes (default: one per CPU this process may use)")
    group.addoption("--mb-worker-threads", type=int, default=None, metavar="N",
                    help="torch threads of every stage under --mb-executor processes (default: CPUs / workers, or "
                         "every CPU for a stage that runs alone); a fixed count reproduces a serial run at that count")
    group.addoption("--mb-ray-address", default="auto", metavar="ADDR",
                    help="Ray cluster to use: HOST:PORT of the head, ray://HOST:PORT, auto (RAY_ADDRESS or the cluster "
                         "started on this machine; the default) or local (a private Ray on this machine)")
    group.addoption("--mb-retries", type=int, default=3, metavar="N",
                    help="times a stage is retried when its worker, node or job dies (not when it raises; default 3)")
    add_slurm_options(group)


def pytest_configure(config: pytest.Config) -> None:
    executor = config.getoption("mb_executor", "local")
    for option in ("workers", "worker_threads"):
        count, flag = config.getoption(f"mb_{option}", None), "--mb-" + option.replace("_", "-")
        if count is not None and (count < 1 or executor != "processes"):
            raise pytest.UsageError(f"{flag} takes a count of 1 or more" if count < 1 else
                                    f"{flag} is an option of --mb-executor processes; add that option "
                                    f"(the executor now is {executor})")
    if executor == "local" or is_worker(config):
        return
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError(f"--mb-executor {executor} distributes the stages itself; drop -n (pytest-xdist)")
    if config.getoption("mb_retries") < 0:
        raise pytest.UsageError("--mb-retries must be 0 or more")
    session = ClusterSession(config, executor)
    config.stash[session_key] = session
    config.pluginmanager.register(session, "mergebench-cluster")


def remote_runner(item: pytest.Item) -> "RemoteCaseRunner | None":
    """What the ``mergebench`` fixture returns under a cluster executor (None in a local run)."""
    session = item.config.stash.get(session_key, None)
    return RemoteCaseRunner(session, item) if session is not None and session.run is not None else None


def _executor(config: pytest.Config, executor: str):
    if executor == "processes":
        from mergebench.cluster.process_executor import ProcessExecutor

        return ProcessExecutor(config.getoption("mb_workers"), retries=config.getoption("mb_retries"),
                               threads=config.getoption("mb_worker_threads"))
    if executor == "ray":
        from mergebench.cluster.ray_executor import RayExecutor

        return RayExecutor(config.getoption("mb_ray_address"), retries=config.getoption("mb_retries"))
    from mergebench.cluster.slurm_executor import SlurmExecutor, slurm_settings

    return SlurmExecutor(slurm_settings(config), retries=config.getoption("mb_retries"))


def _run_settings(config: pytest.Config):
    from dataclasses import asdict

    from mergebench import pytest_judge
    from mergebench.cache import default_cache_root
    from mergebench.cluster.run import ClusterRun
    from mergebench.cluster.stages import RunSettings

    root = Path(config.getoption("mb_cache_dir") or default_cache_root()).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return RunSettings(
        cache_root=str(root), run_id=ClusterRun.new_run_id(), device=config.getoption("mb_device"),
        seed=config.getoption("mb_seed"), model_roots=tuple(str(Path(p).expanduser().resolve())
                                                              for p in config.getoption("mb_model_root")),
        allow_pickle=config.getoption("mb_allow_pickle"), eval_limit=config.getoption("mb_limit"),
        batch_size=config.getoption("mb_batch_size"), backend=config.getoption("mb_backend"),
        search=config.getoption("mb_search"), judge=asdict(pytest_judge.settings(config)),
    )


class ClusterSession:
    """Registered on the driver when a cluster executor is chosen: starts the run, shows it, stops it."""

    def __init__(self, config: pytest.Config, executor: str) -> None:
        self.config = config
        self.executor = executor
        self.run = None
        self.display = None
        self.started = 0.0

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session):
        interrupted = session.testsfailed and not session.config.option.continue_on_collection_errors
        cases = [item.callspec.params["mb_case"] for item in session.items
                 if "mb_case" in getattr(getattr(item, "callspec", None), "params", {})]
        if session.config.option.collectonly or interrupted or not cases:
            return (yield)
        self._start(cases)
        try:
            return (yield)
        finally:
            self._stop()

    def _start(self, cases) -> None:
        from mergebench import plugin_manager
        from mergebench.cluster.run import ClusterRun
        from mergebench.errors import MergebenchError

        self.started = time.monotonic()
        run = ClusterRun(_executor(self.config, self.executor), _run_settings(self.config), plugin_manager.registries(), cases)
        try:
            run.start()
        except MergebenchError as exc:
            run.stop()
            raise pytest.UsageError(f"mergebench: {exc}") from None
        except BaseException:
            run.stop()
            raise
        self.run = run
        self.display = ClusterDisplay(self.config)
        counts = ", ".join(f"{kind} {n}" for kind, n in run.graph.counts().items())
        self.display.note(f"mergebench: {len(run.graph.stages)} stages submitted to {run.executor.name} ({counts}) "
                          f"{time.monotonic() - self.started:.1f}s after the start (connect, probe, plan)")

    def _stop(self) -> None:
        if self.run is None:
            return
        try:
            self.refresh(*self.run.tick())
        except Exception:  # the engine may be gone (an interrupted run): say what is known
            pass
        if self.run.unfinished():
            self.display.note(f"mergebench: cancelling {self.run.unfinished()} unfinished stages on {self.run.executor.name}")
        self.run.stop()

    def refresh(self, notes: list[tuple[str, str]], failures: list[tuple[str, BaseException]]) -> None:
        """Show what the last look at the cluster found (called while an item waits)."""
        for source, message in notes:
            self.display.note(f"[{source}] {message}")
        for _, error in failures:
            self.display.note(f"  cluster: {error}")
        self.display.status(self.run.board)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.run is None or self.run.board is None:
            return
        nodes = self.run.nodes_used()
        placed = ", ".join(f"{node} {n}" for node, n in sorted(nodes.items()))
        failed = sum(1 for ok in self.run.board.finished.values() if not ok)
        where, plural = ("worker process", "es") if self.executor == "processes" else ("node", "s")
        terminalreporter.write_line(
            f"mergebench cluster ({self.run.executor.name}): {len(self.run.board.finished)} of {len(self.run.graph.stages)} "
            f"stages finished, {failed} failed, in {time.monotonic() - self.started:.1f}s (the stages' own work: "
            f"{self.run.busy_seconds():.1f}s); ran on {len(nodes)} {where if len(nodes) == 1 else where + plural}: "
            f"{placed or 'none'}")


class RemoteCaseRunner:
    """What a benchmark test receives as ``mergebench`` under a cluster executor: waits for its case."""

    def __init__(self, session: ClusterSession, item: pytest.Item) -> None:
        self.session = session
        self.item = item

    def run(self, case):
        from mergebench.cluster.run import StageLost
        from mergebench.cluster.stages import StageFailed
        from mergebench.pytest_results import record_result
        from mergebench.results import CaseResult

        try:
            with self.session.display.showing():
                data = self.session.run.result(case.id, on_tick=self.session.refresh)
        except StageFailed as exc:
            if exc.usage:  # a MergebenchError: the same one-paragraph failure a local run gives, and where it ran
                pytest.fail(f"{exc.error_type}: {exc.message} ({exc.label}, on {exc.host})", pytrace=False)
            pytest.fail(f"{exc}\n\nremote traceback ({exc.label} on {exc.host}):\n{exc.remote_traceback}", pytrace=False)
        except StageLost as exc:
            pytest.fail(str(exc), pytrace=False)
        result = CaseResult.from_dict(data)
        record_result(self.item, result)
        return result


class ClusterDisplay:
    """The board on pytest's terminal: Rich bars (one per stage kind) while an item waits, or plain lines.

    Plain lines follow :class:`~mergebench.progress.LineSink`'s rule: a line per kind at most every
    ``every_seconds``; notes (what stages report, and failures) at once.
    """

    def __init__(self, config: pytest.Config, every_seconds: float | None = None) -> None:
        from mergebench.pytest_progress import _live_bars, _PytestLineSink

        self.config = config
        self.bars = _live_bars(config)
        self.lines = _PytestLineSink(config)
        self.every_seconds = float(os.environ.get("MERGEBENCH_CLUSTER_STATUS_SECONDS", 15.0)) if every_seconds is None \
            else every_seconds
        self._last = 0.0
        self._progress = None
        self._tasks: dict[str, int] = {}

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False, emoji=False, soft_wrap=True)
        else:
            self.lines.write(message)

    def status(self, board) -> None:
        if self._progress is not None:
            for row in board.status():
                if row.kind not in self._tasks:
                    self._tasks[row.kind] = self._progress.add_task(f"cluster {row.kind}", total=row.total, tail="")
                self._progress.update(self._tasks[row.kind], completed=row.done, tail=row.tail().removeprefix("; "))
            return
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            for line in board.lines(now):
                self.lines.write(line)

    @contextlib.contextmanager
    def showing(self) -> Iterator[None]:
        """While an item waits: live bars (output capture suspended, as for a local run's bars), or nothing to set up."""
        if not self.bars:
            yield
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            reporter = self.config.pluginmanager.getplugin("terminalreporter")
            if reporter is not None:
                reporter.ensure_newline()
            self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("stages"), TimeElapsedColumn(), TextColumn("{task.fields[tail]}", markup=False),
                                      console=Console(force_terminal=True), transient=True)
            self._tasks = {}
            self._progress.start()
            try:
                yield
            finally:
                progress, self._progress = self._progress, None
                progress.stop()
