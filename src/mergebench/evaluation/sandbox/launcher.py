"""Start one sandbox, feed it the job, read its verdict against a deadline, and kill it all.

The harness never blocks on the sandbox: the job is written and the verdict read through
non-blocking pipes in one ``select`` loop that ends at the deadline or after a capped number of
bytes, and every wait after it is bounded too. To stop a sandbox (at once on timeout, after a
short grace otherwise) the harness sends SIGTERM to its top process, which has PID 1 of the
sandbox's PID namespace SIGKILLed (:mod:`._child.main`); the kernel then kills every process in
that namespace, ``setsid()`` escapees included, and the top process exits only after all of
them are gone. Should that chain not finish within a second, the harness SIGKILLs the whole
process group, PID 1 included.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mergebench.evaluation.sandbox.program import STATUSES, Limits, Outcome, Program
from mergebench.evaluation.sandbox.scrub import scrub

VERDICT_CAP = 64 << 10  # bytes of verdict the harness will read
_CHILD_DIR = str(Path(__file__).resolve().parent)
_BOOT = (f"import sys; sys.path.insert(0, {_CHILD_DIR!r}); from _child.main import main; "
         "del sys.path[0]; main()")
SETUP_ERROR = "setup-error"


def interpreter() -> list[str]:
    """The real interpreter, without site-packages or environment-driven paths (the job is stdlib only)."""
    flags = ["-S", "-s"] + (["-P"] if sys.version_info >= (3, 11) else [])
    return [os.path.realpath(sys.executable), *flags, "-c", _BOOT]


def launch(program: Program, limits: Limits, isolate: bool) -> Outcome | str:
    """Run ``program``; an :class:`Outcome`, or the sandbox's setup error as a string."""
    scratch_dir = contextlib.nullcontext("/work") if isolate else tempfile.TemporaryDirectory(prefix="mergebench-sandbox-")
    with scratch_dir as scratch:  # inside the sandbox /work is its own tmpfs; without it, a host directory
        config = {"isolate": isolate, "limits": limits.as_child_config(), "workdir": scratch,
                  "candidate": program.candidate}
        job = {"trusted": program.trusted, "tests": program.tests, "entry_points": list(program.entry_points)}
        payload = _frame(config) + _frame(job)
        # PYTHONHASHSEED makes set and dict-of-str orders reproducible; the child clears it before any job code.
        child = subprocess.Popen(interpreter(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, env={"PYTHONHASHSEED": "0"}, cwd="/",
                                 start_new_session=True)
        finished = False
        try:
            verdict, finished = _exchange(child, payload, time.monotonic() + limits.timeout)
        finally:
            _stop(child, grace=0.5 if finished else 0.0)
    if not finished:
        return Outcome("timeout", f"no result within {limits.timeout:g}s wall clock")
    return _parse(verdict, child.returncode)


def _frame(message: dict) -> bytes:
    payload = json.dumps(message).encode("utf-8")
    return len(payload).to_bytes(8, "big") + payload


def _exchange(child: subprocess.Popen, payload: bytes, deadline: float) -> tuple[bytes, bool]:
    """Write the job and read the verdict until its end, EOF, the cap or the deadline; (bytes, in time)."""
    stdin, stdout = child.stdin.fileno(), child.stdout.fileno()
    os.set_blocking(stdin, False)
    os.set_blocking(stdout, False)
    received, pending = bytearray(), memoryview(payload)
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        selector.register(stdin, selectors.EVENT_WRITE)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(received), False
            for key, _ in selector.select(left):
                if key.fd == stdin:
                    try:
                        pending = pending[os.write(stdin, pending):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin)
                        child.stdin.close()
                    continue
                chunk = os.read(stdout, VERDICT_CAP + 1 - len(received))
                if not chunk:
                    return bytes(received), True
                received += chunk
                if b"\n" in received or len(received) > VERDICT_CAP:  # the driver writes one line, then exits
                    return bytes(received[:VERDICT_CAP]), True


def _stop(child: subprocess.Popen, grace: float) -> None:
    """Let the sandbox exit by itself for ``grace`` seconds, then SIGTERM (the kill chain), then SIGKILL its group."""
    for stream in (child.stdin, child.stdout):
        if stream and not stream.closed:
            stream.close()
    for wait, action in ((grace, None), (1.0, signal.SIGTERM), (1.0, signal.SIGKILL)):
        try:
            if action == signal.SIGTERM:
                child.send_signal(action)
            elif action == signal.SIGKILL:
                os.killpg(child.pid, action)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue  # the last one is left to subprocess's own reaping; the harness does not wait on it


def _parse(verdict: bytes, returncode: int | None) -> Outcome | str:
    lines = verdict.decode("utf-8", "replace").strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else {}
        status, detail = found.get("status"), scrub(found.get("detail", ""))
    except (ValueError, AttributeError):
        status, detail = None, ""
    if status == SETUP_ERROR:
        return detail or "the sandbox failed to start"
    if status in STATUSES:
        return Outcome(status, detail)
    return Outcome("crashed", f"the sandbox ended without a verdict (exit {returncode})")

