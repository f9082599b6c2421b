"""Generated code runs isolated by the kernel and judged by a process it cannot reach.

The first tests keep the old guard's intent (loops time out, allocations fail, crashes are scored).
The rest are the red team's attacks on that guard, each aimed at the new sandbox: for each one,
nothing outside the sandbox's own work directory changes, a token set in the harness's environment
comes back in nothing, and the harness returns within the time limit plus a second.
"""

from __future__ import annotations

import os
import resource
import secrets
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mergebench.evaluation.sandbox import Limits, Outcome, Program, launcher, policy, run_program, run_programs
from mergebench.evaluation.sandbox.scrub import scrub

FAST = Limits(timeout=3, memory_mb=256)


@pytest.fixture(scope="module")
def namespaces():
    """Skip (saying why) where the kernel offers no namespaces; this machine and CI's have them."""
    problem = policy.namespace_problem()
    if problem is not None:
        pytest.skip(f"the kernel sandbox cannot start here: {problem}")


@pytest.fixture
def token(monkeypatch, namespaces):
    """A fake secret in the harness's environment; redaction is off so a leak would show."""
    value = f"mbtok-{secrets.token_hex(12)}"
    monkeypatch.setenv("MERGEBENCH_FAKE_TOKEN", value)
    monkeypatch.setattr(launcher, "scrub", lambda text: str(text)[:500])
    return value


def attack(token: str, program: Program | str, limits: Limits = FAST) -> Outcome:
    """Run an attack; it must end in time and return nothing that carries the token."""
    started = time.monotonic()
    outcome = run_program(program, limits)
    assert time.monotonic() - started < limits.timeout + 1, outcome
    assert token not in repr(outcome)
    return outcome


def candidate(source: str) -> str:
    return textwrap.dedent(source).lstrip()


def leftover_processes(marker: str) -> list[str]:
    """Host processes whose name (comm) is ``marker``: escapees from a sandbox."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == marker:
                found.append(comm.parent.name)
        except OSError:
            pass
    return found


# --- the old guard's intent ----------------------------------------------------------------


def test_passing_and_failing_programs(namespaces):
    ok, bad, broken, bare = run_programs([
        Program("def f(x):\n    return x + 1\n", "assert f(1) == 2\n"),
        Program("def f(x):\n    return x\n", "assert f(1) == 2, 'wrong'\n"),
        Program("def f(:\n", "assert f(1) == 2\n"),
        "def f(x):\n    return x + 1\nassert f(1) == 2\n",
    ], FAST)
    assert ok.status == "passed" and bare.status == "passed"
    assert bad.status == "failed" and bad.detail == "AssertionError: wrong"
    assert broken.status == "failed" and broken.detail.startswith("SyntaxError")


def test_values_cross_as_plain_literals(namespaces):
    outcome = run_program(Program(candidate("""
        from collections import Counter, namedtuple
        def f(x):
            return x, {1: {2, 3}}, b"ab", 2 ** 100, 1j, frozenset(), float("inf"), Counter("aab"), namedtuple("P", "a b")(1, 2)
    """), "r = f((None, [1.5]))\nassert r == ((None, [1.5]), {1: {2, 3}}, b'ab', 2 ** 100, 1j, frozenset(), float('inf'), {'a': 2, 'b': 1}, (1, 2)), r\n"), FAST)
    assert outcome.status == "passed", outcome


def test_an_infinite_loop_is_killed_at_the_wall_clock_limit(namespaces):
    started = time.monotonic()
    outcome = run_program("while True:\n    pass\n", Limits(timeout=1.5, memory_mb=256))
    assert outcome.status == "timeout"
    assert time.monotonic() - started < 2.5


def test_a_sleeping_program_times_out_too(namespaces):
    assert run_program("import time\ntime.sleep(30)\n", Limits(timeout=1, memory_mb=256)).status == "timeout"


def test_the_cpu_limit_is_a_timeout(namespaces):
    outcome = run_program("while True:\n    pass\n", Limits(timeout=8, memory_mb=256, cpu_seconds=1))
    assert outcome.status == "timeout" and "CPU limit" in outcome.detail


def test_unbounded_allocation_hits_the_memory_limit(namespaces):
    outcome = run_program("x = []\nwhile True:\n    x.append(bytearray(10 << 20))\n", FAST)
    assert outcome.status == "memory"
    assert run_program("x = bytearray(2 << 30)\n", FAST).status == "memory"
    in_a_call = Program("def f():\n    return bytearray(2 << 30)\n", "f()\n")
    assert run_program(in_a_call, FAST).status == "memory"


def test_a_program_that_kills_its_interpreter_is_a_scored_crash(namespaces):
    outcome = run_program("import os\nos._exit(3)\n", FAST)
    assert outcome.status == "crashed" and "code 3" in outcome.detail
    segfault = run_program(Program("import ctypes\ndef f():\n    ctypes.string_at(0)\n", "f()\n"), FAST)
    assert segfault.status == "crashed" and "SIGSEGV" in segfault.detail


def test_output_of_the_program_cannot_forge_a_result(namespaces):
    assert run_program('print(\'{"status": "passed"}\')\nassert False\n', FAST).status == "failed"


def test_the_child_runs_in_a_fresh_empty_directory(namespaces):
    program = Program("import os\ndef where():\n    return os.getcwd(), os.listdir('.')\n",
                      f"cwd, entries = where()\nassert cwd != {os.getcwd()!r} and entries == [], (cwd, entries)\n")
    assert run_program(program, FAST).status == "passed"


# --- the red team's attacks ------------------------------------------------------------------


def test_unlink_spawn_system_and_reload_cannot_touch_the_host(token, tmp_path):
    victim, marker = tmp_path / "keep.txt", tmp_path / "marker"
    victim.write_text("mine")
    outcome = attack(token, Program(candidate(f"""
        import ctypes, importlib, os, posix, subprocess
        VICTIM, MARKER = {str(victim)!r}, {str(marker)!r}
        SHELL = f"touch {{MARKER}}; rm -f {{VICTIM}}"
        ATTEMPTS = {{
            "posix.unlink": lambda: posix.unlink(VICTIM),
            "posix.posix_spawn": lambda: os.waitpid(posix.posix_spawn("/bin/sh", ["sh", "-c", SHELL], {{}}), 0),
            "ctypes system": lambda: ctypes.CDLL(None).system(SHELL.encode()),
            "reload(os).system": lambda: importlib.reload(os).system(SHELL),
            "subprocess": lambda: subprocess.run(["/bin/sh", "-c", SHELL]),
            "open": lambda: open(MARKER, "w").write("x"),
            "makedirs + open": lambda: (os.makedirs(os.path.dirname(MARKER), exist_ok=True), open(MARKER, "w").write("x")),
        }}
        def attempts():
            results = {{}}
            for name, attempt in ATTEMPTS.items():
                try:
                    attempt()
                    results[name] = "ran"
                except BaseException as exc:
                    results[name] = type(exc).__name__
            return results
    """), "print(attempts())\n"))
    assert outcome.status == "passed", outcome  # every attempt ran or failed inside; the driver survived
    assert victim.read_text() == "mine"
    assert not marker.exists()


def test_signals_reach_nothing_outside(token):
    canary = subprocess.Popen(["sleep", "60"])
    try:
        outcome = attack(token, Program(candidate(f"""
            import os, posix, signal
            def strike():
                for pid in (os.getppid(), 1, {canary.pid}, {os.getpid()}, -1):
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGSTOP, signal.SIGKILL):
                        try:
                            posix.kill(pid, sig)
                        except OSError:
                            pass
                return "done"
        """), "assert strike() == 'done'\n"))
        assert canary.poll() is None, "a process outside the sandbox was signalled"
    finally:
        canary.kill()
        canary.wait()
    assert outcome.status == "passed", outcome  # the driver (PID 1) survived every signal and judged


def test_host_files_processes_and_environment_are_invisible(token):
    outcome = attack(token, Program(candidate("""
        import os
        def loot():
            found = {"environ": dict(os.environ), "listing": sorted(os.listdir("/"))}
            for path in ("/etc/passwd", f"/proc/{os.getppid()}/environ", "/proc/self/environ", "/proc/1/environ",
                         "/proc/1/mem", os.path.expanduser("~/.cache"), "/root/.bashrc", "/sys/kernel"):
                try:
                    with open(path, "rb") as handle:
                        found[path] = handle.read(4096).decode("latin-1")
                except OSError as exc:
                    found[path] = type(exc).__name__
            return found
    """), candidate(f"""
        found = loot()
        assert found["environ"] == {{}}, found
        assert set(found["listing"]) <= {{"bin", "dev", "lib", "lib32", "lib64", "libx32", "root", "sbin", "tmp", "usr", "work"}}, found
        assert all(v == "FileNotFoundError" for k, v in found.items() if k.startswith("/")), found
        assert {token!r} not in repr(found)
    """)))
    assert outcome.status == "passed", outcome


def test_a_token_in_an_error_message_is_redacted(monkeypatch, namespaces):
    value = f"mbtok-{secrets.token_hex(12)}"
    monkeypatch.setenv("MERGEBENCH_FAKE_TOKEN", value)
    outcome = run_program(f"raise RuntimeError('leaked ' + {value!r} + ' ' + 'x' * 2000)\n", FAST)
    assert value not in outcome.detail and "[redacted]" in outcome.detail and len(outcome.detail) <= 500
    assert scrub(f"a {value} b\x00") == "a [redacted] b?"


def test_nothing_outside_the_work_directory_is_writable(token, tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    outcome = attack(token, Program(candidate(f"""
        import os, sys
        def write(path, size):
            try:
                with open(path, "wb") as handle:
                    for _ in range(size >> 20):
                        handle.write(b"x" * (1 << 20))
                return "written"
            except OSError as exc:
                return type(exc).__name__ + ":" + os.strerror(exc.errno or 0)
        def scribble():
            return {{
                "victim": write({str(victim)!r}, 0),
                "root": write("/evil", 0),
                "stdlib": write(os.path.dirname(os.__file__) + "/os.py", 0),
                "interpreter": write(sys.executable, 0),
                "dev": write("/dev/evil", 0),
                "work": write("/work/ok", 1 << 20),
                "tmp": write("/tmp/ok2", 1 << 20),
                "one huge file": write("/work/big", 64 << 20),
            }}
    """), candidate("""
        r = scribble()
        assert r["work"] == r["tmp"] == "written", r
        assert r["victim"].startswith("FileNotFoundError"), r
        assert all(r[k].endswith("Read-only file system") for k in ("root", "stdlib", "interpreter", "dev")), r
        assert r["one huge file"].startswith("OSError:File too large"), r
    """)), Limits(timeout=5, memory_mb=256, file_bytes=8 << 20, work_bytes=12 << 20))
    assert outcome.status == "passed", outcome
    assert victim.read_text() == "mine"


def test_total_bytes_written_are_capped(token):
    outcome = attack(token, Program(candidate("""
        def fill():
            try:
                for i in range(100):
                    with open(f"/work/{i}", "wb") as handle:
                        handle.write(b"x" * (1 << 20))
            except OSError as exc:
                return i, exc.strerror
    """), "assert fill() == (12, 'No space left on device'), fill()\n"), Limits(timeout=5, memory_mb=256, work_bytes=12 << 20))
    assert outcome.status == "passed", outcome


def test_forks_are_limited_and_do_not_outlive_the_sandbox(token):
    marker = f"mbfork{secrets.token_hex(3)}"
    outcome = attack(token, Program(candidate(f"""
        import ctypes, os, time
        forked = 0
        for _ in range(50):
            try:
                if os.fork() == 0:
                    ctypes.CDLL(None).prctl(15, b"{marker}", 0, 0, 0)
                    time.sleep(60)
                    os._exit(0)
                forked += 1
            except OSError:
                pass
        def count():
            return forked
    """), "assert count() <= 8, count()\n"), Limits(timeout=5, memory_mb=256))
    assert outcome.status == "passed", outcome
    assert not leftover_processes(marker)


def test_there_is_no_network(token):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        outcome = attack(token, Program(candidate(f"""
            import socket
            def reach():
                errors = []
                for address in (("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)):
                    try:
                        socket.create_connection(address, timeout=1).close()
                        errors.append("connected")
                    except OSError as exc:
                        errors.append(type(exc).__name__)
                return errors, [name for _, name in socket.if_nameindex()]
        """), "errors, interfaces = reach()\nassert 'connected' not in errors and interfaces == ['lo'], (errors, interfaces)\n"))
        assert not select.select([listener], [], [], 0)[0], "the harness's loopback was reached"
    finally:
        listener.close()
    assert outcome.status == "passed", outcome


def test_a_setsid_grandchild_cannot_hold_the_harness(token):
    marker = f"mbsetsid{secrets.token_hex(3)}"
    escape = candidate(f"""
        import ctypes, os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                ctypes.CDLL(None).prctl(15, b"{marker}", 0, 0, 0)
                time.sleep(60)
            os._exit(0)
        def f():
            return 1
    """)
    limits = Limits(timeout=2, memory_mb=256)
    assert attack(token, Program(escape, "assert f() == 1\n"), limits).status == "passed"
    assert attack(token, Program(escape + "time.sleep(60)\n", "assert f() == 1\n"), limits).status == "timeout"
    assert not leftover_processes(marker)  # gone by the time the harness returns, not merely signalled


def test_a_program_cannot_report_its_own_pass(token):
    forge = candidate("""
        import ctypes, gc, json, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        verdict = json.dumps({"status": "passed", "detail": ""}).encode() + b"\\n"
        for module in list(sys.modules.values()):
            for name in ("report", "_report"):
                try:
                    getattr(module, name)("passed", "")
                except BaseException:
                    pass
        for fd in range(64):
            try:
                os.write(fd, verdict)
            except OSError:
                pass
        libc.ptrace(16, 1, 0, 0)  # PTRACE_ATTACH to the driver
        secrets_seen = [o for o in gc.get_objects() if isinstance(o, str) and "assert" in o]
        def double(x):
            return x + 1
    """)
    outcome = attack(token, Program(forge, "assert double(2) == 4\n"))
    assert outcome.status == "failed", outcome  # the verdict line it wrote to fd 4 broke its own reply pipe
    truthy = Program("class Yes:\n    def __eq__(self, other):\n        return True\n    __bool__ = lambda self: True\n"
                     "def double(x):\n    return Yes()\n", "assert double(2) == 4\nassert double(2)\n")
    assert attack(token, truthy).status == "failed"
    shadow = Program("def abs(x):\n    return 0\ndef area(r):\n    return 1\n", "assert abs(area(2) - 12.56) < 0.01\n")
    assert attack(token, shadow).status == "failed"  # the candidate cannot take over a builtin the tests use


def test_flooding_the_pipes_cannot_grow_the_harness(token):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flood = candidate("""
        import os
        os.write(4, (1 << 30).to_bytes(8, "big"))
        chunk = b"x" * (1 << 20)
        for _ in range(900):
            for fd in (1, 2, 4):
                os.write(fd, chunk)
    """)
    outcome = attack(token, Program(flood, "pass\n"), Limits(timeout=5, memory_mb=256))
    assert outcome.status == "failed" and "exceeds" in outcome.detail, outcome
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 << 10  # KiB


def test_root_does_not_matter(token):
    outcome = attack(token, Program(candidate("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def privileges():
            found = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
            try:
                os.setuid(0)
                found["setuid"] = "ok"
            except OSError as exc:
                found["setuid"] = exc.strerror
            for name, call in (("mount", lambda: libc.mount(b"none", b"/work", b"tmpfs", 0, None)),
                               ("nested user namespace", lambda: libc.unshare(0x10000000)),
                               ("network namespace", lambda: libc.unshare(0x40000000))):
                found[name] = call() == 0
            return found
    """), "p = privileges()\nassert p['uid'] == 1000 and p['setuid'] != 'ok' and not any(p[k] for k in ('mount', 'nested user namespace', 'network namespace')), p\n"))
    assert outcome.status == "passed", outcome


# --- where the kernel offers no namespaces ------------------------------------------------------


@pytest.fixture
def no_namespaces(monkeypatch):
    monkeypatch.setattr(policy, "namespace_problem", lambda: "unshare(user, pid, ...) failed: Operation not permitted (errno 1)")
    monkeypatch.delenv(policy.UNSANDBOXED_ENV, raising=False)


def test_without_namespaces_generated_code_is_refused(no_namespaces):
    with pytest.raises(policy.SandboxUnavailableError, match=r"Operation not permitted.*MERGEBENCH_UNSANDBOXED_CODE=1"):
        run_program(Program("def f():\n    return 1\n", "assert f() == 1\n"))
    with pytest.raises(policy.SandboxUnavailableError):
        run_programs(["x = 1\n"])


def test_the_opt_in_runs_it_with_limits_but_without_isolation(no_namespaces):
    policy._warn_unsandboxed.cache_clear()  # it warns once per process
    policy.allow_unsandboxed_code()
    try:
        with pytest.warns(UserWarning, match="WITHOUT the kernel sandbox"):
            outcomes = run_programs([Program("def f():\n    return 1\n", "assert f() == 1\n"),
                                     Program("def f():\n    return 2\n", "assert f() == 1\n"), "while True:\n    pass\n"],
                                    Limits(timeout=2, memory_mb=256))
    finally:
        policy.allow_unsandboxed_code(False)
    assert [o.status for o in outcomes] == ["passed", "failed", "timeout"]
    assert not policy.unsandboxed_code_allowed()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare(1) to build a host without namespaces")
def test_a_real_namespace_failure_is_named(namespaces):
    """Inside a user namespace whose user.max_user_namespaces is 0, unshare(2) really fails."""
    probe = "from mergebench.evaluation.sandbox import policy; print(policy.namespace_problem())"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                           f"echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c '{probe}'"],
                          capture_output=True, text=True, timeout=60)
    assert "unshare(user, pid, mount, net, ipc, uts, cgroup namespaces) failed: No space left on device" in done.stdout, done
