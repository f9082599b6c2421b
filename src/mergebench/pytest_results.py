"""Benchmark results in a pytest run: gathered, written, saved, compared with a saved run and gated.

A case's result travels in its test's ``user_properties`` (:func:`record_result`) because
pytest-xdist already ships those from the worker to the controller with each report. The
controller alone gathers them (:class:`ResultCollector`, registered only there), so the tables,
``--mb-json``, ``--mb-save`` and the ``--mb-compare`` gate see every worker's cases once. A result
carries its per-item values inline (:mod:`mergebench.results.compact`), so intervals and the
gate's paired test work the same under xdist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mergebench.errors import MergebenchError
from mergebench.pytest_plugin import is_worker, selection_options

RESULT_PROPERTY = "mergebench_result"


def pytest_addoption(parser: pytest.Parser) -> None:
    results = parser.getgroup("mergebench-results", "mergebench: saving, comparing and gating results")
    results.addoption("--mb-json", default=None, metavar="PATH",
                      help="write every case's result to PATH as JSON (plots are written next to it)")
    results.addoption("--mb-save", default=None, metavar="TAG",
                      help="save the results under --mb-save-dir as <machine>-<commit>-<date>-<TAG>.json")
    results.addoption("--mb-html", default=None, metavar="DIR",
                      help="write DIR/index.html: the run's results as one self-contained page to share")
    results.addoption("--mb-save-dir", default=".mergebench", metavar="DIR", help="where saved runs live (default .mergebench)")
    results.addoption("--mb-compare", nargs="?", const="", default=None, metavar="RUN",
                      help="compare with a saved run: a TAG, a path, or nothing for the newest")
    results.addoption("--mb-compare-fail", action="append", default=[], metavar="KIND[:NAME]:AMOUNT",
                      help="fail if a value regresses past AMOUNT vs --mb-compare, e.g. normalized:2%% task:gsm8k_mini:1.5pp")
    results.addoption("--mb-compare-alpha", type=float, default=0.05, metavar="ALPHA",
                      help="level of the gate's one-sided paired test: a drop past AMOUNT fails only if the test "
                           "rejects 'no drop' at ALPHA (default 0.05)")
    results.addoption("--mb-compare-test", choices=("bootstrap", "point"), default="bootstrap",
                      help="bootstrap: drops must pass AMOUNT and the test (default); point: point estimates alone")


def pytest_configure(config: pytest.Config) -> None:
    if not is_worker(config):
        config.pluginmanager.register(ResultCollector(config, _check_result_options(config)), "mergebench-results")


def _check_result_options(config: pytest.Config):
    from mergebench.results.gating import check_alpha, parse_thresholds

    fail = config.getoption("mb_compare_fail")
    if fail and config.getoption("mb_compare") is None:
        raise pytest.UsageError("--mb-compare-fail needs --mb-compare [RUN] (the saved run to compare with)")
    try:
        if config.getoption("mb_html"):
            from mergebench.results.html import check_page_dir

            check_page_dir(config.getoption("mb_html"), "--mb-html")
        check_alpha(config.getoption("mb_compare_alpha"), "--mb-compare-alpha")
        return parse_thresholds(fail)
    except MergebenchError as exc:
        raise pytest.UsageError(str(exc)) from None


def record_result(item: pytest.Item, result) -> None:
    item.user_properties.append((RESULT_PROPERTY, json.dumps(result.to_dict())))


@dataclass
class Comparison:
    """This run against the saved ``baseline``; when that could not be loaded, ``error`` says why."""

    baseline: Path | None
    deltas: list = field(default_factory=list)
    only_in_baseline: list[str] = field(default_factory=list)
    only_now: list[str] = field(default_factory=list)
    error: str = ""


class ResultCollector:
    """Controller-side plugin: gathers case results, writes and saves them, compares and gates, prints tables."""

    def __init__(self, config: pytest.Config, thresholds) -> None:
        self.config = config
        self.thresholds = thresholds
        self.rows: list[dict[str, Any]] = []
        self.written: list[Path] = []
        self.comparison: Comparison | None = None
        self._results: list | None = None  # decoded once the session's cases are in
        self._boot = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY:
                self.rows.append(json.loads(value))

    def results(self):
        from mergebench.results import CaseResult

        if self._results is None or len(self._results) != len(self.rows):
            self._results, self._boot = [CaseResult.from_dict(r) for r in sorted(self.rows, key=lambda r: r["case_id"])], None
        return self._results

    def bootstrap(self):
        """One set of resamples for the tables, the JSON and the figures (None without per-item values)."""
        results = self.results()
        if self._boot is None and any(r.items is not None for r in results):
            from mergebench.results.uncertainty import Bootstrap

            self._boot = Bootstrap(results)
        return self._boot

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.rows:
            return
        results = self.results()
        self._write(results)
        compare_to = self.config.getoption("mb_compare")
        if compare_to is not None:
            from mergebench.results.gating import compare, unmatched
            from mergebench.results.storage import load_run

            try:
                path, baseline = load_run(compare_to or None, Path(self.config.getoption("mb_save_dir")))
                deltas = compare(baseline, results, self.thresholds,  # refuses runs of another semantics
                                 alpha=self.config.getoption("mb_compare_alpha"),
                                 test=self.config.getoption("mb_compare_test"))
            except MergebenchError as exc:
                self.comparison = Comparison(None, error=str(exc))
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
                return
            self.comparison = Comparison(path, deltas, *unmatched(baseline, results))
            gate_empty = bool(self.thresholds) and not deltas  # a gate that compared nothing must not pass
            if (gate_empty or any(d.failed_by for d in deltas)) and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write(self, results) -> None:
        from mergebench.results import write_json
        from mergebench.results.plots import write_plots

        meta = _run_meta(self.config)
        json_path = self.config.getoption("mb_json")
        boot = self.bootstrap()
        if json_path:
            self.written.append(write_json(results, json_path, meta=meta, boot=boot))
            self.written += write_plots(results, Path(json_path).with_suffix(""), boot=boot)
        html_dir = self.config.getoption("mb_html")
        if html_dir:
            from mergebench.results.html import write_page
            from mergebench.results.html_meta import make_run

            name = Path(json_path).stem if json_path else "this run"
            self.written.append(write_page([make_run(name, results, meta, boot=boot)], html_dir))
        tag = self.config.getoption("mb_save")
        if tag:
            from mergebench.results.storage import save_run

            saved = save_run(results, tag, root=Path(self.config.getoption("mb_save_dir")), meta=meta, boot=boot)
            self.written.append(saved)
            self.written += write_plots(results, saved.with_suffix(""), boot=boot)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if not self.rows:
            return
        from mergebench.results.comparison_report import comparison_table, gate_lines, render
        from mergebench.results.report import render_session

        width, color = terminalreporter._tw.fullwidth, terminalreporter.hasmarkup
        terminalreporter.write_sep("=", "mergebench results")
        terminalreporter.write(render_session(self.results(), width=width, color=color, boot=self.bootstrap()))
        for path in self.written:
            terminalreporter.write_line(f"written: {path}")
        comparison = self.comparison
        if comparison is None:
            return
        if comparison.error:
            terminalreporter.write_line(f"mergebench: cannot compare: {comparison.error}", red=True)
            return
        deltas = comparison.deltas
        alpha, test = config.getoption("mb_compare_alpha"), config.getoption("mb_compare_test")
        terminalreporter.write_sep("=", "mergebench comparison")
        terminalreporter.write(render(comparison_table(deltas, comparison.baseline.name, alpha=alpha, test=test),
                                      width, color))
        if comparison.only_in_baseline:
            terminalreporter.write_line(f"only in the baseline: {', '.join(comparison.only_in_baseline)}")
        if comparison.only_now:
            terminalreporter.write_line(f"new in this run: {', '.join(comparison.only_now)}")
        for style, line in gate_lines(deltas, alpha=alpha, test=test):
            terminalreporter.write_line(line, red="red" in style, yellow=style == "yellow", bold="bold" in style)
        failed = [d for d in deltas if d.failed_by]
        if self.thresholds and not deltas:
            terminalreporter.write_line(f"mergebench: the gate compared nothing: {comparison.baseline.name} shares no "
                                        "(model, method) with this run (another suite or selection?); failing the run",
                                        red=True, bold=True)
        elif failed:
            terminalreporter.write_line(f"mergebench: {len(failed)} value(s) regressed past --mb-compare-fail; failing the run",
                                        red=True, bold=True)
        elif self.thresholds:
            terminalreporter.write_line("mergebench: no regression past --mb-compare-fail", green=True)


def _run_meta(config: pytest.Config) -> dict[str, Any]:
    import platform

    from mergebench import __version__
    from mergebench.results.storage import git_commit

    return {
        "mergebench_version": __version__,
        "commit": git_commit(),
        "machine": platform.node(),
        "python": platform.python_version(),
        "options": selection_options(config),
        "device": config.getoption("mb_device"),
    }
