"""Entry point of the sandbox interpreter: jail, then fork the driver (PID 1) and the candidate.

Process tree, outermost first:

* P, started by the harness in a new session, reads the job's first frame (limits and the
  candidate's source) from stdin; with isolation it forks C and writes C's id maps
  (:mod:`.jail`), then waits.
* C, inside the new namespaces, builds and enters the new root, then forks I and waits.
* I is PID 1 of the new PID namespace and the trusted driver. It sets the limits, drops every
  capability, becomes non-dumpable and forks K *before* it reads the second frame (the tests),
  so nothing K inherits knows them. Its verdict goes to stdout, a pipe K never holds. When I
  exits, the kernel kills everything else in the namespace.
* K is the candidate (:mod:`.candidate`): stdin/stdout/stderr are /dev/null, fds 3 and 4 its
  request and reply pipes, nothing else open.

To stop a sandbox the harness sends SIGTERM to P, P forwards it to C, and C SIGKILLs I: the
kernel then kills the whole PID namespace, I's exit waits until all of it is gone, and each
process reaps its own child, so no zombie is left to a host init that may never reap it.

Without isolation (the explicit opt-in for hosts without namespaces) P forks I directly, in a
scratch directory the harness made; limits, the split into driver and candidate and the
verdict channel are the same, but the filesystem, network and processes are the host's.
"""

from __future__ import annotations

import _signal as signal  # not `signal`, which imports enum (start-up time)
import os
import resource

from . import candidate, driver, jail, wire

REQUESTS, REPLIES = 3, 4  # the candidate's fds


def main() -> None:
    try:
        config = wire.loads(wire.recv(0))
    except BaseException:  # noqa: BLE001 - the harness went away before sending a job
        os._exit(2)
    os.environ.clear()
    try:
        signal.signal(signal.SIGTERM, _forward)
        if config["isolate"]:
            jail.enter(config["limits"]["work_bytes"], on_fork=lambda pid: _CHILD.extend([pid, False]))
        else:
            os.chdir(config["workdir"])
        init = os.fork()
        if init == 0:
            _init(config)
        _CHILD[:] = [init, True]
        status = os.waitpid(init, 0)[1]
        os._exit(min(max(os.waitstatus_to_exitcode(status), 0), 255))
    except jail.SetupError as exc:
        _report("setup-error", str(exc))
    except BaseException as exc:  # noqa: BLE001 - a sandbox that cannot start must say why
        _report("setup-error", f"{type(exc).__name__}: {exc}")
    os._exit(1)


_CHILD: list = []  # [pid, is the init]: where a termination request goes


def _forward(*_) -> None:
    """SIGTERM from above: kill the init (which takes its PID namespace along), or pass it down to C."""
    if not _CHILD:
        os._exit(1)
    pid, is_init = _CHILD
    os.kill(pid, signal.SIGKILL if is_init else signal.SIGTERM)


def _init(config: dict) -> None:
    """I: limits, no privileges, fork the candidate, then read the tests and judge."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    jail.die_with_parent()
    limits = config["limits"]
    _set_limits(limits, config["isolate"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the only signal a PID 1 without handlers would take
    jail.drop_privileges()
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _become_candidate(config["candidate"], requests_r, replies_w)
    os.close(requests_r)
    os.close(replies_w)
    job = wire.loads(wire.recv(0))
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    channel = driver.Channel(requests_w, replies_r, pid)
    status, detail = driver.drive(channel, job, limits["cpu_seconds"])
    _report(status, detail)
    os._exit(0)


def _become_candidate(source: str, requests: int, replies: int) -> None:
    """K: only the two pipes stay open, then the program runs."""
    jail.die_with_parent()
    if replies == REQUESTS:
        replies = os.dup(replies)
    os.dup2(requests, REQUESTS)
    os.dup2(replies, REPLIES)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(REPLIES + 1, 1 << 16)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    candidate.serve(source, REQUESTS, REPLIES)
    os._exit(0)


def _set_limits(limits: dict, isolate: bool) -> None:
    cpu = limits["cpu_seconds"]
    pairs = {resource.RLIMIT_AS: (limits["memory_bytes"],) * 2, resource.RLIMIT_CPU: (cpu, cpu + 1),
             resource.RLIMIT_FSIZE: (limits["file_bytes"],) * 2, resource.RLIMIT_CORE: (0, 0),
             resource.RLIMIT_NOFILE: (64, 64)}
    if isolate:  # counted per user; outside a user namespace that would count the harness's own processes
        pairs[resource.RLIMIT_NPROC] = (limits["processes"],) * 2
    for which, pair in pairs.items():
        resource.setrlimit(which, pair)


def _report(status: str, detail: str) -> None:
    try:
        os.write(1, wire.dumps({"status": status, "detail": detail[:2000]}) + b"\n")
    except OSError:
        pass
