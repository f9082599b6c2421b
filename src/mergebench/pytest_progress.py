"""Progress of benchmark cases on pytest's terminal, in a serial run and across xdist workers.

Stages report through :mod:`mergebench.progress` and a case runs under :func:`progress_sink`:

* in one process, Rich bars when pytest writes to an interactive terminal (output capture is
  suspended while they show), else plain lines that get past capture;
* on an xdist worker, which cannot write to the controller's terminal, events the controller
  replays (:mod:`mergebench.progress_relay`) into its own sink: Rich bars labelled with the
  worker on a terminal, the same plain lines as a serial run (prefixed ``[gwN]``) otherwise.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest

from mergebench.progress import LineSink, RichSink, Sink, live_bars_wanted
from mergebench.progress_relay import FileSink, LabelledSink, ProgressRelay
from mergebench.pytest_plugin import is_worker

relay_key = pytest.StashKey["ProgressRelay"]()


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


def progress_sink(config: pytest.Config) -> Sink:
    """Where a case's progress goes in this process: see the module docstring."""
    if is_worker(config):
        folder = config.workerinput.get("mb_progress_dir")
        if folder:
            return FileSink(Path(folder), config.workerinput.get("workerid", "gw?"))
        return LineSink(stream=sys.__stderr__)
    return _PytestRichSink(config) if _live_bars(config) else _PytestLineSink(config)


def _relay(config: pytest.Config) -> ProgressRelay:
    if relay_key not in config.stash:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        write_line = reporter.write_line if reporter else (lambda line: print(line, file=sys.stderr))
        if _live_bars(config):
            bars = _RelayRichSink(config)
            relay = ProgressRelay(write_line, sink_for=lambda worker: LabelledSink(bars, worker))
        else:
            relay = ProgressRelay(write_line)
        relay.start()
        config.stash[relay_key] = relay
    return config.stash[relay_key]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller hook: tell a new worker where its progress goes (the relay starts with the first worker)."""
    node.workerinput["mb_progress_dir"] = str(_relay(node.config).folder)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller hook: a worker ended; close the bars it left open (it may have crashed mid-stage)."""
    relay = node.config.stash.get(relay_key, None)
    if relay is not None:
        relay.worker_down(getattr(node, "workerinput", {}).get("workerid") or node.gateway.id)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Replay the workers' last lines and close what they left open before the terminal summary is written."""
    relay = session.config.stash.get(relay_key, None)
    if relay is not None:
        relay.stop()
