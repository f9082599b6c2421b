"""Stage events from the workers to the driver, through the shared cache.

A worker appends JSON lines to its own file in ``<cache>/cluster/<run>/events/`` (one file per
host and process, so no two writers share a file): ``stage`` events when a stage starts and ends
(with the node, for the driver's "running on" column) and ``note`` events (what a stage says, such
as ``[built] merge ... in 3.1s``). The driver tails the folder. The cache is already checked to be
shared by every node (:mod:`.probe`), so this needs no channel of the engine's own and works the
same under Ray and Slurm. Inner progress bars (tensors merged, items evaluated) are not sent: a
cluster's display is one line per stage kind, not one bar per running stage.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any, Iterator

from mergebench.progress import Bar


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass


class EventWriter:
    """A worker's events file; also a progress sink that forwards notes and drops bars."""

    def __init__(self, folder: Path, source: str) -> None:
        self.path = Path(folder) / f"{source}.log"
        self.source = source
        self._lock = threading.Lock()

    def emit(self, **event: Any) -> None:
        line = json.dumps(event, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)

    @contextlib.contextmanager
    def bar(self, description: str, total: int | None, unit: str) -> Iterator[Bar]:
        yield _NullBar()

    def note(self, message: str) -> None:
        self.emit(ev="note", message=message)


class EventTail:
    """The driver's reader of a run's events folder: complete new lines of every file since the last call."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._offsets: dict[Path, int] = {}

    def read(self) -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        for path in sorted(self.folder.glob("*.log")):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
            self._offsets[path] = offset + len(complete)
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    found.append((path.stem, event))
        return found
