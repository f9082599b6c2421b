"""The driver's view of a cluster run: per stage kind, how many stages are done, running (and where) and queued.

Completion comes from the engine (a finished task or job, failed or not); "running on NODE" from
the workers' stage events (:mod:`.events`), since an engine's own view of what runs where differs
between Ray and Slurm. A stage that started but has not finished is running; one that has not
started is queued, whatever the engine calls it (waiting for its inputs, for resources, in a
Slurm queue).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from mergebench.cluster.graph import KINDS, StageGraph
from mergebench.progress import format_line

SHOWN_RUNNING = 3
"""Running stages named in a status line; the rest are counted."""


@dataclass
class KindStatus:
    kind: str
    total: int
    done: int = 0
    failed: int = 0
    running: list[tuple[str, str]] = field(default_factory=list)  # (stage label, node)

    @property
    def queued(self) -> int:
        return self.total - self.done - len(self.running)

    def tail(self) -> str:
        """``; 2 running (merge tiny-llama/ties [node-a], ...), 4 queued, 1 failed`` — the part after the counts."""
        parts = []
        if self.running:
            named = ", ".join(f"{label} [{node}]" for label, node in self.running[:SHOWN_RUNNING])
            more = f", +{len(self.running) - SHOWN_RUNNING} more" if len(self.running) > SHOWN_RUNNING else ""
            parts.append(f"{len(self.running)} running ({named}{more})")
        if self.queued:
            parts.append(f"{self.queued} queued")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return "; " + ", ".join(parts) if parts else ""


class Board:
    """Counts per kind, updated from engine completions (:meth:`finish`) and worker events (:meth:`apply`)."""

    def __init__(self, graph: StageGraph) -> None:
        self.graph = graph
        self.started = time.monotonic()
        self.finished: dict[str, bool] = {}  # stage id → succeeded
        self.running: dict[str, str] = {}  # stage id → node
        self.nodes: dict[str, str] = {}  # stage id → node it last ran on

    def apply(self, events: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
        """Take the workers' events; return their notes as (source, message) for the display."""
        notes = []
        for source, event in events:
            kind = event.get("ev")
            if kind == "note":
                notes.append((source, str(event.get("message", ""))))
            elif kind == "stage":
                stage_id, node = str(event.get("id")), str(event.get("node", source))
                if stage_id not in self.graph.stages:
                    continue
                self.nodes[stage_id] = node
                if event.get("state") == "start" and stage_id not in self.finished:
                    self.running[stage_id] = node
                elif event.get("state") == "end":
                    self.running.pop(stage_id, None)
        return notes

    def finish(self, stage_id: str, ok: bool) -> None:
        self.finished[stage_id] = ok
        self.running.pop(stage_id, None)

    def status(self) -> list[KindStatus]:
        rows = {kind: KindStatus(kind, total) for kind, total in self.graph.counts().items()}
        for stage_id, ok in self.finished.items():
            row = rows[self.graph.stages[stage_id].kind]
            row.done += 1
            row.failed += 0 if ok else 1
        for stage_id, node in self.running.items():
            rows[self.graph.stages[stage_id].kind].running.append((self.graph.stages[stage_id].label, node))
        return [rows[kind] for kind in KINDS if kind in rows]

    def lines(self, now: float | None = None) -> list[str]:
        """One plain progress line per kind, as the local run's lines look."""
        seconds = (time.monotonic() if now is None else now) - self.started
        return [format_line(f"cluster {row.kind}", row.done, row.total, "stages", seconds, row.tail()) for row in self.status()]
