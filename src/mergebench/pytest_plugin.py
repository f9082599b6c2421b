"""The pytest plugin: benchmark cases as parametrized tests, results gathered, reported and gated.

Any test that takes the ``mb_case`` fixture is parametrized over the selected (model, method,
task) grid with ids like ``gemma-2-2b-it-ties-gsm8k``, and marked with the task's domain and the
method's family, so ``-k "ties and gemma"`` or ``-m math`` select cases. Collection imports no
torch: specs are plain data and implementations load when a case runs.

Results travel from xdist workers to the controller in ``item.user_properties``; the controller
alone gathers them (:class:`ResultCollector`), prints the tables, writes ``--mb-json`` and
``--mb-save``, compares with a saved run and fails the session on regressions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from mergebench import judge_options
from mergebench.errors import MergebenchError
from mergebench.progress import LineSink, RichSink, live_bars_wanted

RESULT_PROPERTY = "mergebench_result"
cases_key = pytest.StashKey[list]()
relay_key = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mergebench", "mergebench: benchmark merging methods")
    group.addoption("--mb-suite", action="append", default=None, metavar="NAME",
                    help="suite(s) to run: mini (embedded model, default), mini-gemma (the mini tasks on Gemma-3-270m), "
                         "full (the study's 8 models), tiny (tests), all")
    group.addoption("--mb-models", action="append", default=None, metavar="NAMES", help="comma-separated model names")
    group.addoption("--mb-methods", action="append", default=None, metavar="NAMES", help="comma-separated merge methods, or all (default: the study's nine and installed plugins' methods)")
    group.addoption("--mb-tasks", action="append", default=None, metavar="NAMES", help="comma-separated tasks")
    group.addoption("--mb-param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                    help="override a method hyperparameter (repeatable)")
    group.addoption("--mb-checkpoint", default=None, metavar="DIR",
                    help="evaluate this existing merged checkpoint instead of merging (with one --mb-models base)")
    group.addoption("--mb-search", default="none", choices=("none", "grid", "halving"),
                    help="tune each method's declared grid on the validation surrogates: the full grid, "
                    "successive halving, or none (declared defaults; the default)")
    group.addoption("--mb-cache-dir", default=None, metavar="DIR",
                    help="artifact cache (default: $MERGEBENCH_CACHE or ~/.cache/mergebench)")
    group.addoption("--mb-device", default="auto", metavar="DEVICE", help="cpu, cuda, cuda:N or auto (default)")
    group.addoption("--mb-limit", type=int, default=None, metavar="N", help="evaluate at most N items per task (smoke runs)")
    group.addoption("--mb-seed", type=int, default=0, help="seed for finetuning, random merge methods and data order")
    group.addoption("--mb-batch-size", type=int, default=16, help="evaluation batch size")
    group.addoption("--mb-backend", default="hf", metavar="NAME",
                    help="evaluation backend: hf (in-process transformers, default) or vllm (CUDA, mergebench[vllm])")
    group.addoption("--mb-model-root", action="append", default=[], metavar="DIR",
                    help="folder with local copies of hub models, as DIR/<org>/<name> (repeatable)")
    group.addoption("--mb-allow-pickle", action="store_true", default=False,
                    help="also load pytorch_model.bin pickles (only for files you trust)")
    judge_options.add_options(group)
    results = parser.getgroup("mergebench-results", "mergebench: saving, comparing and gating results")
    results.addoption("--mb-json", default=None, metavar="PATH",
                      help="write every case's result to PATH as JSON (plots are written next to it)")
    results.addoption("--mb-save", default=None, metavar="TAG",
                      help="save the results under --mb-save-dir as <machine>-<commit>-<date>-<TAG>.json")
    results.addoption("--mb-save-dir", default=".mergebench", metavar="DIR", help="where saved runs live (default .mergebench)")
    results.addoption("--mb-compare", nargs="?", const="", default=None, metavar="RUN",
                      help="compare with a saved run: a TAG, a path, or nothing for the newest")
    results.addoption("--mb-compare-fail", action="append", default=[], metavar="KIND[:NAME]:AMOUNT",
                      help="fail if a value regresses past AMOUNT vs --mb-compare, e.g. normalized:2%% task:gsm8k_mini:1.5pp")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _options(config: pytest.Config) -> dict[str, Any]:
    return {
        "suites": config.getoption("mb_suite") or ["mini"],
        "models": config.getoption("mb_models"),
        "methods": config.getoption("mb_methods"),
        "tasks": config.getoption("mb_tasks"),
        "params": config.getoption("mb_param"),
        "checkpoint": config.getoption("mb_checkpoint"),
    }


def pytest_configure(config: pytest.Config) -> None:
    from mergebench.specs import DOMAINS, GENERAL

    for name in (*DOMAINS, GENERAL):
        config.addinivalue_line("markers", f"{name}: mergebench cases whose task is in the {name} domain")
    for family in ("coefficient", "sparsification", "other"):
        config.addinivalue_line("markers", f"{family}: mergebench cases of a {family} merge method (the study's Table 1)")
    from mergebench.evaluation.backends import check_backend

    try:
        check_backend(config.getoption("mb_backend"))
    except MergebenchError as exc:
        raise pytest.UsageError(f"mergebench: {exc}") from None
    if _is_worker(config):
        _configure_worker(config)
        return
    thresholds = _check_result_options(config)
    config.pluginmanager.register(ResultCollector(config, thresholds), "mergebench-results")
    options = _options(config)
    if any(options[k] for k in ("models", "methods", "tasks", "params", "checkpoint")) or config.getoption("mb_suite"):
        _selected_cases(config)  # a bad name or hyperparameter is a usage error before collection starts


def _check_result_options(config: pytest.Config):
    from mergebench.gating import parse_thresholds

    fail = config.getoption("mb_compare_fail")
    if fail and config.getoption("mb_compare") is None:
        raise pytest.UsageError("--mb-compare-fail needs --mb-compare [RUN] (the saved run to compare with)")
    try:
        return parse_thresholds(fail)
    except MergebenchError as exc:
        raise pytest.UsageError(str(exc)) from None


def _configure_worker(config: pytest.Config) -> None:
    """Give this xdist worker its own GPU and its share of the CPU cores (before torch loads)."""
    from mergebench.xdist_support import gpu_for_worker

    gpus = config.workerinput.get("mb_gpus") or []
    worker_id = config.workerinput.get("workerid", "gw0")
    workers = int(config.workerinput.get("workercount", 1) or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    if gpus and config.getoption("mb_device") in ("auto", "cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for_worker(worker_id, gpus) or ""


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller hook: pass GPUs and the progress folder to a new worker."""
    from mergebench.xdist_support import visible_gpus

    config = node.config
    node.workerinput["mb_gpus"] = visible_gpus()
    relay = _relay(config)
    node.workerinput["mb_progress_dir"] = str(relay.folder)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` on a benchmark run: one worker per visible GPU (None lets xdist count CPUs)."""
    from mergebench.xdist_support import visible_gpus

    runs_benchmarks = any("benchmark" in str(arg) for arg in config.args) or any(
        v for k, v in _options(config).items() if k != "suites") or config.getoption("mb_suite")
    gpus = visible_gpus() if runs_benchmarks and config.getoption("mb_device") != "cpu" else []
    return len(gpus) or None


def _relay(config: pytest.Config):
    if relay_key not in config.stash:
        from mergebench.xdist_support import ProgressRelay

        reporter = config.pluginmanager.getplugin("terminalreporter")
        write_line = reporter.write_line if reporter else (lambda line: print(line, file=sys.stderr))
        if _live_bars(config):
            from mergebench.xdist_support import LabelledSink

            bars = _RelayRichSink(config)
            relay = ProgressRelay(write_line, sink_for=lambda worker: LabelledSink(bars, worker))
        else:
            relay = ProgressRelay(write_line)
        relay.start()
        config.stash[relay_key] = relay
    return config.stash[relay_key]


def _selected_cases(config: pytest.Config):
    """The cases the --mb-* options select (computed once per session)."""
    if cases_key not in config.stash:
        from mergebench import plugin_manager
        from mergebench.selection import select_cases

        try:
            config.stash[cases_key] = select_cases(plugin_manager.registries(), **_options(config))
        except MergebenchError as exc:
            raise pytest.UsageError(f"mergebench: {exc}") from None
    return config.stash[cases_key]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mb_case" not in metafunc.fixturenames:
        return
    from mergebench import plugin_manager

    cases = _selected_cases(metafunc.config)
    registries = plugin_manager.registries()
    params = []
    for case in cases:
        task = registries.tasks.get(case.task)
        family = registries.methods.get(case.method).family if case.method in registries.methods else "other"
        marks = [getattr(pytest.mark, task.domain), getattr(pytest.mark, family),
                 pytest.mark.xdist_group(f"{case.model}-{case.method}")]
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize("mb_case", params)


def pytest_report_collectionfinish(config: pytest.Config, items) -> str | None:
    """When ``-k`` leaves no benchmark case of the selected suites, say which suite has matches."""
    keyword = config.getoption("keyword")
    if not keyword or _is_worker(config) or cases_key not in config.stash:
        return None
    if any("mb_case" in getattr(item, "fixturenames", ()) for item in items):
        return None
    from _pytest.mark import KeywordMatcher
    from _pytest.mark.expression import Expression

    from mergebench import plugin_manager
    from mergebench.selection import select_cases

    try:
        expression = Expression.compile(keyword)
    except Exception:
        return None
    registries = plugin_manager.registries()
    hints = []
    for suite in ("mini", "mini-gemma", "full", "tiny"):
        if suite in (config.getoption("mb_suite") or ["mini"]):
            continue
        try:
            cases = select_cases(registries, suites=[suite])
        except MergebenchError:
            continue
        matching = [c for c in cases if expression.evaluate(KeywordMatcher(
            {c.id, "test_merge", registries.tasks.get(c.task).domain, registries.methods.get(c.method).family}))]
        if matching:
            hints.append(f"{len(matching)} cases of --mb-suite {suite} (e.g. {matching[0].id})")
    if hints:
        return f"mergebench: no selected case matches -k {keyword!r}; it matches " + "; ".join(hints)
    return None


class _PytestLineSink(LineSink):
    """Progress lines that reach the terminal even while pytest captures output."""

    def __init__(self, config: pytest.Config) -> None:
        super().__init__(stream=None)
        self.config = config

    def write(self, line: str) -> None:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if capman is None or reporter is None:
            super().write(line)
            return
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)


def _live_bars(config: pytest.Config) -> bool:
    """Rich bars when pytest's own output goes to an interactive terminal (see ``live_bars_wanted``)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return False
    return live_bars_wanted(reporter.isatty(), config.getoption("color", "auto"))


class _PytestRichSink(RichSink):
    """Live bars on pytest's terminal: output capture is suspended while bars show.

    Rich's live display redirects ``sys.stdout``/``sys.stderr`` meanwhile, so whatever the case
    prints appears above the bars; notes outside a bar are lines, as with ``_PytestLineSink``.
    """

    def __init__(self, config: pytest.Config) -> None:
        super().__init__()
        self.config = config
        self._lines = _PytestLineSink(config)
        self._suspended = contextlib.ExitStack()

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(force_terminal=True)  # sys.stdout at each write: the terminal while suspended
        return self._console

    def _begin(self) -> None:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            self._suspended.enter_context(capman.global_and_fixture_disabled())
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()

    def _end(self) -> None:
        self._suspended.close()

    def note(self, message: str) -> None:
        if self._progress is None:
            self._lines.write(message)
        else:
            super().note(message)


class _LineProxy(io.TextIOBase):
    """Stands in for pytest's terminal file while the relay's bars show: complete lines go above the bars."""

    def __init__(self, console, file) -> None:
        self.console, self.file = console, file
        self._partial = ""

    def write(self, text: str) -> int:
        from rich.text import Text

        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self.console.print(Text.from_ansi(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:  # a partial line (pytest's dots) waits for its newline
        pass

    def isatty(self) -> bool:
        return self.file.isatty()

    def release(self) -> None:
        self.file.write(self._partial)
        self.file.flush()
        self._partial = ""


class _RelayRichSink(RichSink):
    """The controller's bars for xdist workers' stages, drawn by the relay thread.

    pytest keeps writing (dots, ``[gw0] PASSED``) meanwhile, straight to its terminal file; that file
    is swapped for a :class:`_LineProxy` while bars show, so its lines land above the bars instead of
    being overwritten by them.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.writer = config.get_terminal_writer()
        self._real_file = getattr(self.writer, "_file", None) or sys.stdout
        from rich.console import Console

        super().__init__(Console(file=self._real_file, force_terminal=True))
        self._proxy: _LineProxy | None = None

    def _begin(self) -> None:
        if self.writer.width_of_current_line:  # start the bars on a fresh line
            self.writer.line()
        if hasattr(self.writer, "_file"):
            self._proxy = _LineProxy(self.console, self._real_file)
            self.writer._file = self._proxy

    def note(self, message: str) -> None:
        if self._progress is None:  # no bars: a line, after pytest's partial line of dots
            if self.writer.width_of_current_line:
                self.writer.line()
            self.writer.line(message)
            self.writer.flush()
        else:
            super().note(message)

    def _end(self) -> None:
        if self._proxy is not None:
            self.writer._file = self._real_file
            self._proxy.release()
            self._proxy = None


def _progress_sink(config: pytest.Config):
    if _is_worker(config):
        from mergebench.xdist_support import FileSink

        folder = config.workerinput.get("mb_progress_dir")
        if folder:
            return FileSink(Path(folder), config.workerinput.get("workerid", "gw?"))
        return LineSink(stream=sys.__stderr__)
    return _PytestRichSink(config) if _live_bars(config) else _PytestLineSink(config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller hook: a worker ended; close the bars it left open (it may have crashed mid-stage)."""
    relay = node.config.stash.get(relay_key, None)
    if relay is not None:
        relay.worker_down(getattr(node, "workerinput", {}).get("workerid") or node.gateway.id)


@pytest.fixture(scope="session")
def mergebench_pipeline(pytestconfig: pytest.Config):
    """The session's :class:`~mergebench.pipeline.Pipeline` (cache, device and registries from the options)."""
    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.devices import resolve_device
    from mergebench.pipeline import Pipeline, RunContext

    try:
        device = resolve_device(pytestconfig.getoption("mb_device"))
    except MergebenchError as exc:
        pytest.exit(f"mergebench: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    context = RunContext(
        cache=ArtifactCache(pytestconfig.getoption("mb_cache_dir")),
        device=device,
        seed=pytestconfig.getoption("mb_seed"),
        model_roots=tuple(Path(p) for p in pytestconfig.getoption("mb_model_root")),
        allow_pickle=pytestconfig.getoption("mb_allow_pickle"),
        eval_limit=pytestconfig.getoption("mb_limit"),
        batch_size=pytestconfig.getoption("mb_batch_size"),
        backend=pytestconfig.getoption("mb_backend"),
        search=pytestconfig.getoption("mb_search"),
        judge=judge_options.settings(pytestconfig),
    )
    return Pipeline(context, plugin_manager.registries())


class CaseRunner:
    """What a benchmark test receives as ``mergebench``: runs a case and records its result."""

    def __init__(self, pipeline, item: pytest.Item) -> None:
        self.pipeline = pipeline
        self.item = item

    def run(self, case):
        from mergebench import progress

        with progress.use_sink(_progress_sink(self.item.config)):
            try:
                result = self.pipeline.run_case(case)
            except MergebenchError as exc:
                pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)
        result.device = {"device": self.pipeline.context.device,
                         "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
        self.item.user_properties.append((RESULT_PROPERTY, json.dumps(result.to_dict())))
        return result


@pytest.fixture
def mergebench(request: pytest.FixtureRequest, mergebench_pipeline) -> CaseRunner:
    return CaseRunner(mergebench_pipeline, request.node)


class ResultCollector:
    """Controller-side plugin: gathers case results, writes and saves them, compares and gates, prints tables."""

    def __init__(self, config: pytest.Config, thresholds) -> None:
        self.config = config
        self.thresholds = thresholds
        self.rows: list[dict[str, Any]] = []
        self.written: list[Path] = []
        self.comparison = None  # (baseline path, deltas, only in baseline, only now)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY:
                self.rows.append(json.loads(value))

    def results(self):
        from mergebench.results import CaseResult

        return [CaseResult.from_dict(r) for r in sorted(self.rows, key=lambda r: r["case_id"])]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        relay = self.config.stash.get(relay_key, None)
        if relay is not None:
            relay.stop()
        if not self.rows:
            return
        results = self.results()
        self._write(results)
        compare_to = self.config.getoption("mb_compare")
        if compare_to is not None:
            from mergebench.gating import compare, unmatched
            from mergebench.storage import load_run

            try:
                path, baseline = load_run(compare_to or None, Path(self.config.getoption("mb_save_dir")))
            except MergebenchError as exc:
                self.comparison = (None, [], [], [str(exc)])
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
                return
            deltas = compare(baseline, results, self.thresholds)
            self.comparison = (path, deltas, *unmatched(baseline, results))
            if any(d.failed_by for d in deltas) and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write(self, results) -> None:
        from mergebench.plots import write_plots
        from mergebench.results import write_json

        meta = _run_meta(self.config)
        json_path = self.config.getoption("mb_json")
        if json_path:
            self.written.append(write_json(results, json_path, meta=meta))
            self.written += write_plots(results, Path(json_path).with_suffix(""))
        tag = self.config.getoption("mb_save")
        if tag:
            from mergebench.storage import save_run

            saved = save_run(results, tag, root=Path(self.config.getoption("mb_save_dir")), meta=meta)
            self.written.append(saved)
            self.written += write_plots(results, saved.with_suffix(""))

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if not self.rows:
            return
        from mergebench.report import comparison_table, regression_lines, render_session

        width, color = terminalreporter._tw.fullwidth, terminalreporter.hasmarkup
        terminalreporter.write_sep("=", "mergebench results")
        terminalreporter.write(render_session(self.results(), width=width, color=color))
        for path in self.written:
            terminalreporter.write_line(f"written: {path}")
        if self.comparison is None:
            return
        path, deltas, only_before, only_now = self.comparison
        if path is None:
            terminalreporter.write_line(f"mergebench: cannot compare: {only_now[0]}", red=True)
            return
        import io

        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=width, force_terminal=color).print(comparison_table(deltas, path.name))
        terminalreporter.write_sep("=", "mergebench comparison")
        terminalreporter.write(buffer.getvalue())
        if only_before:
            terminalreporter.write_line(f"only in the baseline: {', '.join(only_before)}")
        if only_now:
            terminalreporter.write_line(f"new in this run: {', '.join(only_now)}")
        failed = [d for d in deltas if d.failed_by]
        for line in regression_lines(deltas):
            terminalreporter.write_line(line, red=True)
        if failed:
            terminalreporter.write_line(f"mergebench: {len(failed)} value(s) regressed past --mb-compare-fail; failing the run",
                                        red=True, bold=True)
        elif self.thresholds:
            terminalreporter.write_line("mergebench: no regression past --mb-compare-fail", green=True)


def _run_meta(config: pytest.Config) -> dict[str, Any]:
    import platform

    from mergebench import __version__

    return {
        "mergebench_version": __version__,
        "machine": platform.node(),
        "python": platform.python_version(),
        "options": _options(config),
        "device": config.getoption("mb_device"),
    }
