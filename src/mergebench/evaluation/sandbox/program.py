"""What the sandbox runs (a :class:`Program`), under which :class:`Limits`, and what comes back (an :class:`Outcome`)."""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("passed", "failed", "timeout", "memory", "crashed")


@dataclass(frozen=True)
class Program:
    """Generated code and the benchmark's checks, kept apart so the code cannot judge itself.

    ``candidate`` runs in the candidate's process. ``trusted`` (benchmark code the checks rely on,
    e.g. HumanEval's helper functions) and then ``tests`` run in the driver's process, where every
    top-level name of the candidate that ``trusted`` does not define is a proxy that calls into
    the candidate, except names of builtins, which only ``entry_points`` (the functions under
    test, e.g. MBPP's ``sum``) may take over. The tests may also fetch a candidate name with
    ``__sandbox_candidate__(name)`` and bound a call's time with
    ``__sandbox_timed_call__(seconds, function, *args)``. Without ``tests``, "passed" only means the
    candidate ran to its end without raising, which the candidate itself controls.
    """

    candidate: str
    tests: str = ""
    trusted: str = ""
    entry_points: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Per-program limits.

    ``timeout`` is wall-clock seconds from start to verdict (the whole sandbox is killed then);
    ``memory_mb`` the address space of each process; ``cpu_seconds`` CPU time of each process
    (default: the timeout rounded down, plus one); ``file_bytes`` the largest file;
    ``work_bytes`` everything written, in total (the size of the private work directory);
    ``processes`` the tasks (processes and threads) the sandbox's user may have, the driver's
    two included.
    """

    timeout: float = 10.0
    memory_mb: int = 1024
    cpu_seconds: int | None = None
    file_bytes: int = 16 << 20
    work_bytes: int = 32 << 20
    processes: int = 8

    def as_child_config(self) -> dict:
        cpu = self.cpu_seconds if self.cpu_seconds is not None else int(self.timeout) + 1
        return {"memory_bytes": self.memory_mb << 20, "cpu_seconds": cpu, "file_bytes": self.file_bytes,
                "work_bytes": self.work_bytes, "processes": self.processes}


@dataclass(frozen=True)
class Outcome:
    """``status`` is one of :data:`STATUSES`; ``detail`` a scrubbed, truncated reason."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"
