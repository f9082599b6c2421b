"""Helpers of the cluster tests: a real local Ray cluster of two node processes, a test plugin, result comparison.

The cluster is a head and a second node started with ``ray start`` on this machine, each with one
CPU, its own resources and a small object store, so placement across "nodes" is Ray's own. Every
process it starts is in the process groups of the two ``ray start --block`` commands; :meth:`stop`
ends those groups (TERM, then KILL) and then any process whose command line names the cluster's
temporary folder, by pid, so nothing outlives the tests, also when they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

START_ATTEMPTS = 3
"""``ray start`` attempts per node (see :meth:`LocalRayCluster._start`)."""

GRID = ("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup,ties,regmean,mtl",
        "--mb-tasks", "toy_math,toy_coding,toy_generate")
"""The cluster tests' grid: 12 cases of four methods (one data-aware, the multi-task model) on three tasks."""

VOLATILE = ("merge_seconds", "validation_seconds", "device")
"""Case result fields that legitimately differ between runs: timings and where it ran."""

TEST_PLUGIN = textwrap.dedent('''
    """Merge methods for the cluster tests: a slow soup (time to kill its worker), and two that fail."""
    import os
    import time

    from mergebench import hookimpl
    from mergebench.errors import CheckpointError
    from mergebench.specs import MethodSpec
    from mergebench_builtins.methods.soup import Soup


    class SlowSoup(Soup):
        """A soup whose merge announces its pid in $MB_TEST_MARKERS and sleeps per tensor."""

        def merge_tensor(self, name, base, experts):
            folder = os.environ.get("MB_TEST_MARKERS")
            if folder:
                open(os.path.join(folder, f"merging-{os.getpid()}"), "a").close()
            time.sleep(float(os.environ.get("MB_TEST_SLOW_SECONDS", "0.3")))
            return super().merge_tensor(name, base, experts)


    class TruncatedSoup(Soup):
        def merge_tensor(self, name, base, experts):
            raise CheckpointError("expert shard model.safetensors is truncated (simulated bad checkpoint)")


    class BuggySoup(Soup):
        def merge_tensor(self, name, base, experts):
            return {}["no such tensor"]


    @hookimpl
    def mergebench_register_methods(register):
        for name, cls in (("slow_soup", "SlowSoup"), ("truncated_soup", "TruncatedSoup"), ("buggy_soup", "BuggySoup")):
            register(MethodSpec(name=name, impl=f"mb_cluster_test:{cls}", family="other", opt_in=True))
''')


def install_test_plugin(site: Path) -> Path:
    """A separately installed distribution (dist-info + module) registering the test methods; put ``site`` on PYTHONPATH."""
    (site / "mb_cluster_test-0.1.dist-info").mkdir(parents=True, exist_ok=True)
    (site / "mb_cluster_test-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-cluster-test\nVersion: 0.1\n")
    (site / "mb_cluster_test-0.1.dist-info" / "entry_points.txt").write_text("[mergebench]\ncluster-test = mb_cluster_test\n")
    (site / "mb_cluster_test.py").write_text(TEST_PLUGIN)
    return site


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_command() -> str:
    return str(Path(sys.executable).with_name("ray"))


class LocalRayCluster:
    """``ray start --head`` plus ``ray start --address`` nodes on this machine, each in its own process group."""

    def __init__(self, env: dict[str, str] | None = None, wrap: list[str] | None = None) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mbray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.port: int | None = None  # the head's, chosen afresh at each attempt to start it
        self.address: str | None = None
        # RAY_AUTH_MODE: Ray turns token authentication on for `ray start --head` when ~/.ray/auth_token exists (any
        # private `ray.init()`, e.g. --mb-ray-address local, writes one), but not for `ray start --address`, whose node
        # would then be refused; the test cluster is private to this machine's loopback, so it runs without.
        self.env = {**os.environ, "RAY_memory_monitor_refresh_ms": "0", "OMP_WAIT_POLICY": "PASSIVE",
                    "RAY_AUTH_MODE": "disabled", **(env or {})}
        self.wrap = wrap or []  # a command the head runs under (a private mount namespace for the unshared-cache test)
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start(self, make_args: Callable[[], list[str]], name: str, wrap: list[str]) -> None:
        """Start a node and wait for it; a ``ray start`` that exits before it is up is started again, with fresh ports.

        Why: on a loaded 2-core machine Ray 2.60's raylet can abort while it waits for its dashboard agent's port
        file (``WaitForDashboardAgentPorts``), which is Ray's start-up and not what the cluster tests check; a node
        that fails every attempt, or never comes up, still fails the test with each attempt's log."""
        failures = []
        for attempt in range(1, START_ATTEMPTS + 1):
            log = self.temp_dir / f"{name}-{attempt}.log"
            self.logs.append(log)
            with open(log, "w") as handle:
                process = subprocess.Popen([*wrap, ray_command(), "start", "--block", *make_args()], stdout=handle,
                                           stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
            self.processes.append(process)
            deadline = time.monotonic() + 180
            while "Ray runtime started" not in log.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            else:
                return
            exited = process.poll() is not None
            failures.append(f"attempt {attempt} ({f'exited {process.returncode}' if exited else 'timed out'}):\n"
                            f"{log.read_text()[-3000:]}")
            if not exited:  # up for 180 s and still not started: not the transient abort
                break
            _signal_group(process.pid, signal.SIGKILL)  # what it started before it exited
        raise RuntimeError(f"ray start ({name}) did not come up:\n" + "\n".join(failures))

    def start_head(self, cpus: int = 1) -> "LocalRayCluster":
        def args() -> list[str]:
            self.port = free_port()
            self.address = f"127.0.0.1:{self.port}"
            return ["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                    "--object-store-memory=80000000", f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
                    "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}", '--resources={"head_node": 1}']

        self._start(args, "head", self.wrap)
        return self

    def add_node(self, cpus: int = 1, name: str = "node2") -> "LocalRayCluster":
        self._start(lambda: [f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                             "--object-store-memory=80000000", "--disable-usage-stats",
                             f"--dashboard-agent-listen-port={free_port()}", '--resources={"second_node": 1}'],
                    name, [])
        return self

    def worker_pids(self) -> list[int]:
        """Ray's task worker processes of this cluster."""
        return [pid for pid, cmd in _processes() if cmd.startswith("ray::") and _in_groups(pid, self.groups())]

    def groups(self) -> set[int]:
        return {p.pid for p in self.processes}

    def stop(self) -> None:
        for proc in self.processes:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.processes:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, cmd in _processes():  # anything that left the groups but still names our folder
            if str(self.temp_dir) in cmd or _in_groups(pid, self.groups()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _processes() -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            found.append((int(entry.name), cmd))
    return found


def _in_groups(pid: int, groups: set[int]) -> bool:
    try:
        return os.getpgid(pid) in groups
    except OSError:
        return False


def comparable(results_json: Path) -> dict[str, dict]:
    """A results file's cases by id, without the fields that differ between any two runs, and with each case's
    cache record reduced to what it built (which a serial run and a cluster run must credit to the same case)."""
    cases = {}
    for case in json.loads(Path(results_json).read_text())["cases"]:
        case = {k: v for k, v in case.items() if k not in VOLATILE}
        case["artifacts"] = sorted((e["stage"], e["digest"]) for e in case["artifacts"] if not e["hit"])
        cases[case["case_id"]] = case
    return cases


_serial: dict[tuple[str, ...], dict[str, dict]] = {}


def serial_reference(pytester, grid: tuple[str, ...], folder: Path) -> dict[str, dict]:
    """The comparable results of a serial run of ``grid`` (run once per test session, shared by the cluster tests)."""
    if grid not in _serial:
        # at one thread, as the engines' workers run: sums split over threads round differently
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            result = pytester.runpytest_subprocess(*grid, "--mb-cache-dir", str(folder / "serial"), "--mb-json",
                                                   str(folder / "serial.json"))
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        assert result.ret == 0, result.outlines[-30:]
        _serial[grid] = comparable(folder / "serial.json")
    return _serial[grid]


def builds(cache: Path) -> list[dict]:
    from mergebench.cache.builds import read_builds

    return list(read_builds(cache))


FAILING_GRID = ("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math",
                "--mb-methods", "slow_soup,truncated_soup,buggy_soup,soup")
"""Four merges: one whose worker the tests kill (retried), two that raise, one plain."""


def kill_first_merge(markers: Path, killed: list[int], stop) -> None:
    """Kill the first process that announces a slow_soup merge in ``markers`` (run in a thread until ``stop``)."""
    while not stop.is_set():
        found = sorted(markers.glob("merging-*"))
        if found:
            pid = int(found[0].name.split("-")[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def check_killed_and_failing_merges(run, cache: Path, killed: list[int], results_json: Path) -> None:
    """What every executor must show after :data:`FAILING_GRID` with its first merge's worker killed."""
    import pytest

    from mergebench.cache import integrity

    assert killed, "no merge started"
    assert run.ret == pytest.ExitCode.TESTS_FAILED, run.outlines[-30:]
    run.assert_outcomes(passed=2, failed=2)
    passed = {c["case_id"] for c in json.loads(results_json.read_text())["cases"]}
    assert passed == {"tiny-llama-slow_soup-toy_math", "tiny-llama-soup-toy_math"}
    # the killed merge was retried on a fresh worker: built once, complete, its dead attempt swept
    merges = [b for b in builds(cache) if b["stage"] == "merged" and b["label"] == "merge tiny-llama/slow_soup"]
    assert len(merges) == 1 and merges[0]["pid"] != killed[0]
    assert integrity.check(cache / "merged" / merges[0]["digest"]).status == "ok"
    assert not list((cache / "tmp").glob(f"*.{killed[0]}.*"))
    # a stage that raises fails its own cases with the cause, and nothing downstream of it is built
    run.stdout.fnmatch_lines([
        "*CheckpointError: expert shard model.safetensors is truncated (simulated bad checkpoint) "
        "(merge tiny-llama/truncated_soup, on *)",
        "*merge tiny-llama/buggy_soup failed on *: KeyError: 'no such tensor'*",
        "*remote traceback (merge tiny-llama/buggy_soup on *",
        "*mb_cluster_test.py*in merge_tensor*",
    ])
    assert not [b for b in builds(cache) if "truncated_soup" in b["label"] or "buggy_soup" in b["label"]]

