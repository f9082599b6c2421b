"""Progress of long stages (finetune steps, merged tensors, evaluated items).

Stages call :func:`progress` and never care where it is shown. The front end installs a sink
with :func:`use_sink`: Rich bars on a terminal, throttled plain lines in CI logs (so a log
shows the job is alive), or a sink that forwards events from an xdist worker to the controller.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterator, Mapping, Protocol, TextIO


class Bar(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def set_total(self, total: int) -> None: ...


class Sink(Protocol):
    @contextlib.contextmanager
    def bar(self, description: str, total: int | None, unit: str) -> Iterator[Bar]: ...

    def note(self, message: str) -> None: ...


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass


class NullSink:
    @contextlib.contextmanager
    def bar(self, description: str, total: int | None, unit: str) -> Iterator[Bar]:
        yield _NullBar()

    def note(self, message: str) -> None:
        pass


def format_line(description: str, done: int, total: int | None, unit: str, seconds: float, tail: str = "") -> str:
    """``  merge ties: 40/80 tensors (50%), 3s`` — the plain progress line, shared by every sink."""
    of = f"/{total}" if total else ""
    pct = f" ({100 * done / total:.0f}%)" if total else ""
    return f"  {description}: {done}{of} {unit}{pct}, {seconds:.0f}s{tail}"


class _LineBar:
    def __init__(self, sink: "LineSink", description: str, total: int | None, unit: str) -> None:
        self.sink, self.description, self.total, self.unit = sink, description, total, unit
        self.done = 0
        self.started = time.monotonic()
        self._last_print = self.started
        self._last_fraction = -1.0

    def set_total(self, total: int) -> None:
        self.total = total

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        fraction = self.done / self.total if self.total else 0.0
        quarter = fraction - self._last_fraction >= 0.25 and now - self.started >= 2.0
        if now - self._last_print >= self.sink.every_seconds or quarter:
            self._print(now)

    def _print(self, now: float, final: bool = False) -> None:
        self._last_print, self._last_fraction = now, (self.done / self.total if self.total else 0.0)
        self.sink.write(format_line(self.description, self.done, self.total, self.unit, now - self.started,
                                    " done" if final else ""))


class LineSink:
    """Plain progress lines, at most one per ``every_seconds`` per bar plus quarter marks."""

    def __init__(self, stream: TextIO | None = None, every_seconds: float = 15.0) -> None:
        self.stream = stream
        self.every_seconds = every_seconds
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            stream = self.stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()

    @contextlib.contextmanager
    def bar(self, description: str, total: int | None, unit: str) -> Iterator[Bar]:
        bar = _LineBar(self, description, total, unit)
        self.write(f"  {description}: started" + (f" ({total} {unit})" if total else ""))
        yield bar  # a stage that raises gets no "done" line
        bar._print(time.monotonic(), final=True)

    def note(self, message: str) -> None:
        self.write(message)


class _RichBar:
    def __init__(self, sink: "RichSink", task_id: int, description: str, total: int | None, unit: str) -> None:
        self.sink, self.task_id = sink, task_id
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self.started = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.sink._progress.advance(self.task_id, n)

    def set_total(self, total: int) -> None:
        self.total = total
        self.sink._progress.update(self.task_id, total=total)


class RichSink:
    """Live Rich progress bars (for an interactive terminal).

    All open bars share one live display, so bars may nest or overlap (the xdist relay shows one
    per worker). A finished bar leaves one plain line above the display; the display itself
    disappears when the last bar closes. Subclasses hook :meth:`_begin` / :meth:`_end` to run
    code just before the display appears and just after it goes (pytest suspends capture there).
    """

    def __init__(self, console: object | None = None) -> None:
        self._console = console
        self._lock = threading.RLock()
        self._progress = None
        self._open = 0

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def _begin(self) -> None:
        pass

    def _end(self) -> None:
        pass

    def open(self, description: str, total: int | None, unit: str) -> _RichBar:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with self._lock:
            if self._progress is None:
                self._begin()
                columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TimeRemainingColumn()]
                self._progress = Progress(*columns, console=self.console, transient=True)
                self._progress.start()
            self._open += 1
            task_id = self._progress.add_task(description, total=total, unit=unit)
            return _RichBar(self, task_id, description, total, unit)

    def close(self, bar: _RichBar, ok: bool = True) -> None:
        with self._lock:
            if self._progress is None:
                return
            self._progress.remove_task(bar.task_id)
            if ok:  # like LineSink, a stage that raised leaves no "done" line (its error is reported)
                self.note(format_line(bar.description, bar.done, bar.total, bar.unit, time.monotonic() - bar.started,
                                      " done"))
            self._open -= 1
            if self._open == 0:
                progress, self._progress = self._progress, None
                try:
                    progress.stop()
                finally:
                    self._end()

    @contextlib.contextmanager
    def bar(self, description: str, total: int | None, unit: str) -> Iterator[Bar]:
        handle = self.open(description, total, unit)
        try:
            yield handle
        except BaseException:
            self.close(handle, ok=False)
            raise
        self.close(handle)

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False, emoji=False, soft_wrap=True)


_sink: Sink = NullSink()


def live_bars_wanted(isatty: bool, color: str = "auto", environ: Mapping[str, str] | None = None) -> bool:
    """Whether progress shows as live Rich bars (else as plain lines).

    ``MERGEBENCH_PROGRESS=bars`` or ``=lines`` decides outright. Otherwise bars need an
    interactive terminal: the output stream is a tty, colour is not switched off (pytest's
    ``--color=no``) and ``TERM`` is not ``dumb``. ``--color=yes`` alone does not ask for bars:
    CI jobs set it for coloured logs, where redrawn bars would only add noise.
    """
    environ = os.environ if environ is None else environ
    choice = environ.get("MERGEBENCH_PROGRESS", "").strip().lower()
    if choice in ("bars", "rich"):
        return True
    if choice in ("lines", "plain"):
        return False
    return bool(isatty) and color != "no" and environ.get("TERM") != "dumb"


def default_sink() -> Sink:
    return RichSink() if live_bars_wanted(sys.stderr.isatty()) else LineSink()


@contextlib.contextmanager
def use_sink(sink: Sink) -> Iterator[Sink]:
    global _sink
    previous, _sink = _sink, sink
    try:
        yield sink
    finally:
        _sink = previous


def current_sink() -> Sink:
    return _sink


@contextlib.contextmanager
def progress(description: str, total: int | None = None, unit: str = "items") -> Iterator[Bar]:
    with _sink.bar(description, total, unit) as bar:
        yield bar


def note(message: str) -> None:
    _sink.note(message)
