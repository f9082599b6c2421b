"""The trusted test driver: runs the benchmark's checks against the candidate, in another process.

Why a second process: anything kept in the candidate's process (a nonce, a "report" function, a
result pipe) can be found by introspection and used to forge a pass. The driver shares no memory
and no file descriptor with the candidate: it was forked before the tests were read, it is not
dumpable (no ptrace, no /proc access by the candidate) and its verdict pipe was closed in the
candidate before the candidate's code ran.

The tests see the candidate's top-level names as :class:`Remote` objects (bound as globals, or
looked up with ``__sandbox_candidate__(name)``): calling one sends the
arguments (plain literals only) over a pipe and returns the candidate's answer decoded as plain
literals, or raises the candidate's exception as a builtin exception of the same name. A result
that is not a literal comes back as another :class:`Remote`, which can be called or passed back
but never compared or tested for truth, so an object whose ``__eq__`` always says yes cannot pass.
"""

from __future__ import annotations

import _signal
import builtins
import os
import select

from . import wire

_SIGNAL_NAMES = {getattr(_signal, n): n for n in sorted(dir(_signal), reverse=True)
                 if n.startswith("SIG") and not n.startswith("SIG_") and n not in ("SIGCLD", "SIGPOLL", "SIGIOT")}


class CandidateGone(BaseException):
    """The candidate process exited or closed its pipe (not catchable by ``except Exception``)."""


class CandidateMemoryError(MemoryError):
    """The candidate ran out of memory."""


class Remote:
    """A name or object that lives in the candidate's process."""

    __slots__ = ("_id", "_name", "_channel")

    def __init__(self, channel: "Channel", handle: int, name: str):
        self._channel, self._id, self._name = channel, handle, name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._id, args, kwargs)

    def __repr__(self) -> str:
        return f"<candidate object {self._name}>"

    def _untrusted(self, *_):
        raise TypeError(f"{self!r} is not a plain value; the sandbox does not let the candidate decide "
                        "comparisons or truth")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = _untrusted
    __hash__ = object.__hash__


class Channel:
    """Request/reply frames to the candidate; every reply is decoded as literals."""

    def __init__(self, requests: int, replies: int, pid: int):
        self.requests, self.replies, self.pid = requests, replies, pid
        self.broken = ""

    def receive(self, timeout: float | None = None):
        if timeout is not None and not select.select([self.replies], [], [], timeout)[0]:
            self.broken = f"no answer within {timeout:g}s"
            raise TimeoutError(f"the candidate gave no answer within {timeout:g}s")
        try:
            return wire.decode(wire.recv(self.replies), self._resolve)
        except EOFError:
            raise CandidateGone() from None

    def call(self, handle: int, args: tuple, kwargs: dict, timeout: float | None = None):
        if self.broken:
            raise RuntimeError(f"the candidate is unusable after an earlier call: {self.broken}")
        message = ["call", handle, wire.encode(list(args), self._reference),
                   wire.encode({str(k): v for k, v in kwargs.items()}, self._reference)]
        try:
            wire.send(self.requests, wire.dumps(message))
        except BrokenPipeError:
            raise CandidateGone() from None
        reply = self.receive(timeout)
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if type(reply) is list and len(reply) == 3 and reply[0] == "raise":
            raise rebuilt_exception(str(reply[1]), str(reply[2]))
        raise wire.ProtocolError("malformed reply")

    def _reference(self, value):
        if type(value) is Remote and value._channel is self:
            return {wire.REF: value._id}
        raise TypeError(f"cannot pass a {type(value).__name__} to the candidate: only plain literals")

    def _resolve(self, tag, obj):
        if tag != wire.HANDLE or type(obj.get(wire.HANDLE)) is not int:
            raise wire.ProtocolError("unexpected reference")
        return Remote(self, obj[wire.HANDLE], str(obj.get("n", "?"))[:80])


def rebuilt_exception(name: str, message: str) -> BaseException:
    """The candidate's exception as a fresh builtin exception of the same name (never its own class)."""
    if name == "MemoryError":
        return CandidateMemoryError(message)
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception) and kind not in (StopIteration, StopAsyncIteration):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            pass
    return RuntimeError(f"{name}: {message}")


def timed_call(seconds: float, function, *args, **kwargs):
    """``__sandbox_timed_call__``: a candidate call failing with TimeoutError past ``seconds`` (per-input limits)."""
    if type(function) is not Remote:
        return function(*args, **kwargs)
    return function._channel.call(function._id, args, kwargs, timeout=seconds)


def drive(channel: Channel, job: dict, cpu_seconds: float) -> tuple[str, str]:
    """Run the job's tests against the candidate; the verdict as (status, detail)."""
    try:
        ready = channel.receive()
        if type(ready) is list and len(ready) == 3 and ready[0] == "error":
            name = str(ready[1])
            return ("memory" if name == "MemoryError" else "failed"), _describe(name, ready[2])
        if not (type(ready) is list and len(ready) == 2 and ready[0] == "ready" and type(ready[1]) is dict):
            raise wire.ProtocolError("malformed first message")
        exports = ready[1]

        def candidate(name: str):
            """The candidate's top-level ``name`` without binding it (e.g. a function called ``sum``)."""
            if name not in exports:
                raise NameError(f"the candidate defines no {name!r}")
            return exports[name]

        namespace = {"__name__": "__main__", "__builtins__": builtins, "__sandbox_timed_call__": timed_call,
                     "__sandbox_candidate__": candidate}
        exec(compile(job["trusted"], "<trusted>", "exec"), namespace)
        entry_points = set(job["entry_points"])
        for name, value in exports.items():  # trusted definitions, and builtins the tests use, stay the driver's
            if type(name) is str and name not in namespace and (name in entry_points or not hasattr(builtins, name)):
                namespace[name] = value
        exec(compile(job["tests"], "<tests>", "exec"), namespace)
    except CandidateGone:
        return candidate_death(channel.pid, cpu_seconds)
    except MemoryError as exc:
        return "memory", _describe("MemoryError", exc)
    except BaseException as exc:  # noqa: BLE001 - any failure of the checks is a failed item
        return "failed", _describe(type(exc).__name__, exc)
    return "passed", ""


def _describe(name: str, message) -> str:
    message = str(message)
    return f"{name}: {message}" if message else name


def candidate_death(pid: int, cpu_seconds: float) -> tuple[str, str]:
    """Why the candidate stopped answering: its exit code, or the signal and the CPU time it had used."""
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return "crashed", "the candidate exited without an answer"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = _SIGNAL_NAMES.get(sig, str(sig))
        if sig == _signal.SIGXCPU or (sig == _signal.SIGKILL and usage.ru_utime + usage.ru_stime >= cpu_seconds):
            return "timeout", f"CPU limit reached ({name})"
        return "crashed", f"killed by {name}"
    return "crashed", f"exited with code {os.WEXITSTATUS(status)} without a result"
