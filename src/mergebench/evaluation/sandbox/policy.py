"""Whether generated code may run on this host: a namespace self-test, and an explicit opt-out for trusted setups.

Generated code never runs without the kernel sandbox unless someone asked for that: where
namespaces are unavailable (Docker's default seccomp profile, ``user.max_user_namespaces=0``,
an AppArmor policy) executing tasks fail with :class:`SandboxUnavailableError` naming the cause,
unless ``MERGEBENCH_UNSANDBOXED_CODE=1`` is set (:func:`allow_unsandboxed_code` sets it, so
subprocesses and xdist workers started afterwards inherit the choice).
"""

from __future__ import annotations

import functools
import os
import warnings

from mergebench.errors import MergebenchError
from mergebench.evaluation.sandbox.launcher import launch
from mergebench.evaluation.sandbox.program import Limits, Program

UNSANDBOXED_ENV = "MERGEBENCH_UNSANDBOXED_CODE"


class SandboxUnavailableError(MergebenchError):
    """The kernel sandbox cannot start on this host and unsandboxed execution was not allowed."""


class SandboxError(MergebenchError):
    """The sandbox passed its self-test but failed to start for one program."""


def allow_unsandboxed_code(allowed: bool = True) -> None:
    """Let (or stop letting) generated code run without namespaces where the sandbox cannot start."""
    if allowed:
        os.environ[UNSANDBOXED_ENV] = "1"
    else:
        os.environ.pop(UNSANDBOXED_ENV, None)


def unsandboxed_code_allowed() -> bool:
    return os.environ.get(UNSANDBOXED_ENV, "") == "1"


@functools.lru_cache(maxsize=1)
def namespace_problem() -> str | None:
    """None when a trivial program runs and passes in the full sandbox; else what went wrong."""
    outcome = launch(Program("x = 1\n", "assert x == 1\n"), Limits(timeout=30, memory_mb=512), isolate=True)
    if isinstance(outcome, str):
        return outcome
    if not outcome.passed:
        return f"its self-test ended with {outcome.status}: {outcome.detail}"
    return None


def isolation() -> bool:
    """True: use the sandbox. False: run without it (opted in). Raises where neither is possible."""
    problem = namespace_problem()
    if problem is None:
        return True
    if unsandboxed_code_allowed():
        _warn_unsandboxed(problem)
        return False
    raise SandboxUnavailableError(
        f"refusing to execute generated code: the kernel sandbox cannot start on this host ({problem}). "
        "It needs user, PID, mount and network namespaces (unshare(2)); Docker's default seccomp profile "
        "blocks them, as can user.max_user_namespaces=0 or an AppArmor policy. Run on a host or container "
        f"that allows them, or, on a trusted setup only, set {UNSANDBOXED_ENV}=1 to run generated code "
        "with limits but without isolation.")


@functools.lru_cache(maxsize=1)
def _warn_unsandboxed(problem: str) -> None:
    warnings.warn(f"generated code runs WITHOUT the kernel sandbox ({UNSANDBOXED_ENV}=1): {problem}", stacklevel=3)
