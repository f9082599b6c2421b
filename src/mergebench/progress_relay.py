"""Progress from xdist workers to the controller's terminal, through files.

A worker cannot write to the controller's terminal, so its stages' progress goes as JSON-line
events (bar start / update / end, notes) appended to one file per worker (:class:`FileSink`) in a
folder the controller tails (:class:`ProgressRelay`) and replays into a sink of its own. Only
complete lines are read, so a half-written event waits for its newline. pytest-free: the pytest
side is :mod:`mergebench.pytest_progress`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from mergebench.progress import Bar, LineSink, Sink


class _FileBar:
    def __init__(self, sink: "FileSink", bar_id: str, total: int | None) -> None:
        self.sink, self.bar_id, self.total = sink, bar_id, total
        self.done = 0
        self._last_write = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last_write >= self.sink.every_seconds:
            self._update(now)

    def set_total(self, total: int) -> None:
        self.total = total
        self._update(time.monotonic())

    def _update(self, now: float) -> None:
        self._last_write = now
        self.sink.emit(ev="update", id=self.bar_id, done=self.done, total=self.total)


class FileSink:
    """A worker's progress as JSON-line events, appended to its file in the relay folder.

    Events: ``start`` (id, desc, total, unit), ``update`` (id, done, total; at most one per
    ``every_seconds`` per bar), ``end`` (id, done, total, ok) and ``note`` (message). Counts are
    absolute, so the relay never depends on seeing every update.
    """

    def __init__(self, folder: Path, worker_id: str, every_seconds: float = 0.25) -> None:
        self.path = Path(folder) / f"{worker_id}.log"
        self.worker_id = worker_id
        self.every_seconds = every_seconds
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def emit(self, **event: object) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)

    @contextlib.contextmanager
    def bar(self, description: str, total: int | None, unit: str) -> Iterator[Bar]:
        bar = _FileBar(self, f"{os.getpid()}-{next(self._ids)}", total)  # the pid keeps a restarted worker's ids apart
        self.emit(ev="start", id=bar.bar_id, desc=description, total=total, unit=unit)
        ok = False
        try:
            yield bar
            ok = True
        finally:
            self.emit(ev="end", id=bar.bar_id, done=bar.done, total=bar.total, ok=ok)

    def note(self, message: str) -> None:
        self.emit(ev="note", message=message)


class WorkerLineSink(LineSink):
    """Plain lines of one worker on the controller, as ``[gwN]   stage: 3/10 items ...``."""

    def __init__(self, write_line: Callable[[str], None], worker_id: str, every_seconds: float = 15.0) -> None:
        super().__init__(every_seconds=every_seconds)
        self.write_line, self.worker_id = write_line, worker_id

    def write(self, line: str) -> None:
        self.write_line(f"[{self.worker_id}] {line}")


class LabelledSink:
    """One worker's view of a shared sink (the controller's Rich bars): bars and notes carry its id."""

    def __init__(self, sink: Sink, worker_id: str) -> None:
        self.sink, self.worker_id = sink, worker_id

    def bar(self, description: str, total: int | None, unit: str):
        return self.sink.bar(f"[{self.worker_id}] {description}", total, unit)

    def note(self, message: str) -> None:
        self.sink.note(f"[{self.worker_id}] {message}")


class WorkerLost(Exception):
    """A worker went away (crashed or shut down) while one of its bars was open."""


class _OpenBar:
    def __init__(self, manager: contextlib.AbstractContextManager, bar: Bar, description: str) -> None:
        self.manager, self.bar, self.description = manager, bar, description
        self.done, self.total = 0, None

    def update(self, done: int | None, total: int | None) -> None:
        if total is not None and total != self.total:
            self.total = total
            self.bar.set_total(total)
        if done is not None and done > self.done:
            self.bar.advance(done - self.done)
            self.done = done


class ProgressRelay:
    """Controller side: tails the workers' event files and replays them into sinks.

    ``sink_for(worker_id)`` gives the sink a worker's bars and notes go to; by default
    :class:`WorkerLineSink` lines through ``write_line``. Only complete lines are read, so a
    line still being written waits for the next drain; a line that is not an event is shown as
    it is. Bars a worker leaves open (it crashed, or the session ends) are closed by
    :meth:`worker_down` / :meth:`stop` with a note instead of a "done" line.
    """

    def __init__(self, write_line: Callable[[str], None], interval: float = 0.5,
                 sink_for: Callable[[str], Sink] | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mergebench-progress-"))
        self.write_line = write_line
        self.interval = interval
        self._sink_for = sink_for or (lambda worker: WorkerLineSink(write_line, worker))
        self._sinks: dict[str, Sink] = {}
        self._bars: dict[tuple[str, str], _OpenBar] = {}
        self._offsets: dict[Path, int] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mergebench-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.drain()
            except Exception as exc:  # a display problem must not end the relay silently
                self.write_line(f"mergebench: progress relay: {type(exc).__name__}: {exc}")

    def sink(self, worker: str) -> Sink:
        if worker not in self._sinks:
            self._sinks[worker] = self._sink_for(worker)
        return self._sinks[worker]

    def drain(self) -> None:
        with self._lock:
            for path in sorted(self.folder.glob("*.log")):
                offset = self._offsets.get(path, 0)
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next drain
                self._offsets[path] = offset + len(complete)
                for line in complete.decode("utf-8", errors="replace").splitlines():
                    self.handle(path.stem, line)

    def handle(self, worker: str, line: str) -> None:
        """Replay one line of ``worker``'s file."""
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "ev" not in event:
            if line.strip():
                self.sink(worker).note(line)
            return
        kind, key = event["ev"], (worker, str(event.get("id")))
        if kind == "note":
            self.sink(worker).note(str(event.get("message", "")))
        elif kind == "start":
            if key in self._bars:  # the same id twice: close the stale bar first
                self._close(key, lost=True)
            manager = self.sink(worker).bar(str(event.get("desc", "")), event.get("total"), str(event.get("unit", "")))
            self._bars[key] = _OpenBar(manager, manager.__enter__(), str(event.get("desc", "")))
        elif kind in ("update", "end") and key in self._bars:
            self._bars[key].update(event.get("done"), event.get("total"))
            if kind == "end":
                self._close(key, lost=not event.get("ok", True))

    def _close(self, key: tuple[str, str], lost: bool) -> None:
        open_bar = self._bars.pop(key)
        if lost:
            error = WorkerLost(open_bar.description)
            open_bar.manager.__exit__(WorkerLost, error, None)
        else:
            open_bar.manager.__exit__(None, None, None)

    def worker_down(self, worker: str) -> None:
        """Read what ``worker`` wrote last, then close the bars it left open."""
        with self._lock:
            self.drain()
            for key in [k for k in self._bars if k[0] == worker]:
                open_bar = self._bars[key]
                of = f"/{open_bar.total}" if open_bar.total else ""
                self._close(key, lost=True)
                self.sink(worker).note(f"  {open_bar.description}: stopped at {open_bar.done}{of} (worker ended)")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.drain()
        for worker in sorted({w for w, _ in self._bars}):
            self.worker_down(worker)
        shutil.rmtree(self.folder, ignore_errors=True)
