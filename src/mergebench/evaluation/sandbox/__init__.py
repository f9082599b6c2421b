"""Run generated code isolated by the kernel, judged by a process it cannot reach.

Guarantees (on Linux with user namespaces; the test battery in ``tests/test_sandbox.py`` attacks each):

* **Isolation by the kernel, not by Python.** Each program runs in fresh user, PID, mount,
  network, IPC, UTS and cgroup namespaces (:mod:`._child.jail`), as an unprivileged uid (1000
  inside; outside, 65534 when the harness is root, else the harness's own uid), with setgroups
  denied, no capabilities, ``no_new_privs``. Its root is a read-only tmpfs holding read-only
  binds of the interpreter, its standard library and its shared-library directories, five
  device nodes and ``/work``, a private size-capped tmpfs (``Limits.work_bytes``) that is the only
  writable place (``/tmp`` links to it). No host ``/proc``, ``/sys``, ``/etc``, home, cache or
  site-packages; no network but a loopback that is down; no environment variables.
* **Limits.** Address space, CPU seconds, file size, total bytes written (the tmpfs), open files
  and tasks (``RLIMIT_NPROC``, counted inside the user namespace).
* **A wall clock that always wins.** The harness reads the verdict through non-blocking pipes
  against a deadline, never waits unboundedly, and on timeout kills the process group that
  holds PID 1 of the sandbox's PID namespace; the kernel then kills every process in it,
  ``setsid()`` escapees included.
* **A verdict the program cannot forge.** The benchmark's checks run in a separate driver
  process (:mod:`._child.driver`) that calls the candidate's functions through a pipe; arguments
  and results cross it as plain literals (JSON with tags for tuples, sets, bytes, big ints;
  never pickle). The driver was forked before it read the tests, is not dumpable, and alone
  holds the verdict pipe. A result that is not a literal cannot be compared or tested for truth.
* **Clean details.** Details are truncated and any value of the harness's environment is
  redacted (:mod:`.scrub`) before they reach ``samples.jsonl``.

Limits of the guarantee: the kernel's whole syscall surface is reachable (no seccomp filter), so a
kernel bug is an escape; there is no memory cgroup, so memory is bounded per process
(``memory_mb`` × ``processes`` at worst) and CPU by rlimits; the checks trust the benchmark's
tests and ``trusted`` code, and whatever names the tests take from the candidate (the functions
under test) are the candidate's; a candidate can always make itself fail, time out or crash.

Where namespaces are unavailable the sandbox refuses to run code (:mod:`.policy`) unless
``MERGEBENCH_UNSANDBOXED_CODE=1`` opts in, and then runs with the same limits and the same
driver/candidate split but on the host's filesystem, network and process table.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from mergebench.evaluation.sandbox import policy
from mergebench.evaluation.sandbox.launcher import launch
from mergebench.evaluation.sandbox.policy import (
    UNSANDBOXED_ENV,
    SandboxError,
    SandboxUnavailableError,
    allow_unsandboxed_code,
    unsandboxed_code_allowed,
)
from mergebench.evaluation.sandbox.program import STATUSES, Limits, Outcome, Program

VERSION = 2  # in evaluation cache keys: 2 = kernel namespaces, checks in a separate driver, deterministic hashing

__all__ = ["STATUSES", "UNSANDBOXED_ENV", "VERSION", "Limits", "Outcome", "Program", "SandboxError",
           "SandboxUnavailableError", "allow_unsandboxed_code", "run_program", "run_programs",
           "unsandboxed_code_allowed"]


DEFAULT_LIMITS = Limits()


def run_program(program: Program | str, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """Run one program (a bare string is a candidate without tests) and return its :class:`Outcome`."""
    if isinstance(program, str):
        program = Program(program)
    outcome = launch(program, limits, policy.isolation())
    if isinstance(outcome, str):
        raise SandboxError(f"the sandbox failed to start: {outcome}")
    return outcome


def run_programs(programs: Sequence[Program | str], limits: Limits | Sequence[Limits] = DEFAULT_LIMITS,
                 workers: int = 2) -> list[Outcome]:
    """:func:`run_program` over ``programs`` (``workers`` at a time), outcomes in order.

    ``limits`` is one :class:`Limits` for all, or one per program.
    """
    if not programs:
        return []
    policy.isolation()  # refuse before starting any, not after the first
    per_program = [limits] * len(programs) if isinstance(limits, Limits) else list(limits)
    if len(per_program) != len(programs):
        raise ValueError(f"{len(per_program)} limits for {len(programs)} programs")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(run_program, programs, per_program))
