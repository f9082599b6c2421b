"""``--mb-executor ray`` against a real local Ray cluster: a head and a second node process on this machine.

The benchmark runs in a pytest subprocess (the driver), as a user runs it; its results must equal a
serial run's, each expert and merge must be built once across the nodes (counted from the cache's
builds log), a worker killed mid-merge must be retried to a complete artifact, a stage that raises
must fail only its own cases, and bad input must stop the run before anything is scheduled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster_helpers import (
    FAILING_GRID,
    GRID,
    LocalRayCluster,
    builds,
    check_killed_and_failing_merges,
    comparable,
    free_port,
    install_test_plugin,
    kill_first_merge,
    serial_reference,
)

ray = pytest.importorskip("ray", reason="the cluster extra is not installed (pip install 'mergebench[cluster]')")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]



@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install_test_plugin(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def markers(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def cluster(site, markers):
    with LocalRayCluster(env={"PYTHONPATH": str(site), "MB_TEST_MARKERS": str(markers)}) as local:
        local.start_head().add_node()
        yield local


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A cache holding tiny-llama's base and experts, built here once; tests about merges start from a copy."""
    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.pipeline import Pipeline, RunContext

    root = tmp_path_factory.mktemp("seeded") / "cache"
    pipeline = Pipeline(RunContext(cache=ArtifactCache(root)), plugin_manager.registries())
    pipeline.experts(pipeline.registries.models.get("tiny-llama"))
    return root


@pytest.fixture
def driver(bench, site, monkeypatch):
    """The benchmark folder, with the test plugin visible to the driver as to the nodes."""
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("MERGEBENCH_PROGRESS", "lines")
    return bench


def test_the_tiny_grid_on_two_nodes_equals_a_serial_run_and_builds_each_artifact_once(driver, cluster, tmp_path):
    serial = serial_reference(driver, GRID, tmp_path)
    run = driver.runpytest_subprocess(*GRID, "--mb-cache-dir", str(tmp_path / "ray"), "--mb-json", str(tmp_path / "ray.json"),
                                      "--mb-executor", "ray", "--mb-ray-address", cluster.address)
    assert run.ret == 0, run.outlines[-30:]
    run.assert_outcomes(passed=12)
    assert comparable(tmp_path / "ray.json") == serial

    built = builds(tmp_path / "ray")
    per_artifact = Counter((b["stage"], b["digest"]) for b in built)
    assert max(per_artifact.values()) == 1, [k for k, n in per_artifact.items() if n > 1]
    kinds = Counter(stage for stage, _ in per_artifact)
    assert kinds["expert"] == 6 and kinds["merged"] == 3  # five experts and the multi-task model; three merges
    assert sorted(per_artifact) == sorted({(s, d) for case in serial.values() for s, d in case["artifacts"]})

    run.stdout.fnmatch_lines(["mergebench: * stages submitted to Ray (base 1, train 6, statistics 1, merge 3, evaluate *, case 12) *s after the start*",
                              "*cluster merge: */3 stages*", "*[[]built] merge tiny-llama/ties in *"])
    summary = [line for line in run.outlines if line.startswith("mergebench cluster (Ray)")]
    assert summary and "0 failed" in summary[0], run.outlines[-10:]
    assert "ran on 2 nodes" in summary[0], summary  # placement across the two node processes is Ray's


def test_a_worker_killed_mid_merge_is_retried_and_a_failing_stage_fails_only_its_cases(driver, cluster, markers, seeded,
                                                                                      tmp_path, monkeypatch):
    for old in markers.glob("merging-*"):
        old.unlink()
    cache = Path(shutil.copytree(seeded, tmp_path / "cache"))
    monkeypatch.setenv("MERGEBENCH_PROGRESS", "bars")  # the board as live Rich bars (forced: the output is a pipe)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_merge, args=(markers, killed, stop), daemon=True)
    killer.start()
    run = driver.runpytest_subprocess(*FAILING_GRID, "--mb-cache-dir", str(cache),
                                      "--mb-executor", "ray", "--mb-ray-address", cluster.address, "--mb-json",
                                      str(tmp_path / "out.json"))
    stop.set()
    check_killed_and_failing_merges(run, cache, killed, tmp_path / "out.json")
    assert "cluster merge" in run.stdout.str() and "\x1b[" in run.stdout.str()  # drawn by Rich, with its escape codes


def test_ctrl_c_cancels_the_outstanding_stages(cluster, site, markers, seeded, tmp_path):
    for old in markers.glob("merging-*"):
        old.unlink()
    env = {**os.environ, "PYTHONPATH": str(site), "MERGEBENCH_PROGRESS": "lines"}
    cache = Path(shutil.copytree(seeded, tmp_path / "cache"))
    bench_file = Path(__file__).resolve().parents[1] / "benchmarks" / "test_merge.py"
    driver = subprocess.Popen([sys.executable, "-m", "pytest", str(bench_file), "-p", "no:cacheprovider", "--mb-suite", "tiny",
                               "--mb-models", "tiny-llama", "--mb-tasks", "toy_math", "--mb-methods", "slow_soup",
                               "--mb-cache-dir", str(cache), "--mb-executor", "ray", "--mb-ray-address", cluster.address],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              # as at a terminal: a suite started in the background by a shell (nohup ... &) inherits
                              # SIGINT ignored, and Python keeps an inherited SIG_IGN, so Ctrl-C would never arrive
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not list(markers.glob("merging-*")):
            assert driver.poll() is None and time.monotonic() < deadline, "the merge never started"
            time.sleep(0.05)
        merging = int(sorted(markers.glob("merging-*"))[0].name.split("-")[1])
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    assert "mergebench: cancelling" in output and "unfinished stages" in output, output[-3000:]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{merging}").exists() and time.monotonic() < deadline:  # the worker running the merge is ended
        time.sleep(0.2)
    assert not Path(f"/proc/{merging}").exists()
    time.sleep(2)
    assert not [b for b in builds(cache) if b["stage"] == "merged"]


def test_a_stage_that_needs_a_gpu_on_a_cluster_without_one_stops_before_anything_runs(driver, cluster, tmp_path):
    result = driver.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup",
                                         "--mb-tasks", "toy_math", "--mb-device", "cuda", "--mb-cache-dir", str(tmp_path / "c"),
                                         "--mb-executor", "ray", "--mb-ray-address", cluster.address)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*mergebench: expert tiny-llama/* needs a GPU (--mb-device cuda), but the Ray cluster has "
                                 "none; add GPU nodes, or run with --mb-device cpu (or auto) and the hf backend*"])
    assert builds(tmp_path / "c") == []


def test_an_unreachable_address_is_refused_at_once(driver, tmp_path):
    port = free_port()
    started = time.monotonic()
    result = driver.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup",
                                         "--mb-tasks", "toy_math", "--mb-cache-dir", str(tmp_path / "c"),
                                         "--mb-executor", "ray", "--mb-ray-address", f"127.0.0.1:{port}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*mergebench: cannot reach the Ray cluster at --mb-ray-address 127.0.0.1:{port} "
                                 "(Connection refused within 5 s): check that `ray start --head` runs there*"])
    assert time.monotonic() - started < 60


def _private_mount_wrapper(hidden: Path) -> list[str] | None:
    """A command prefix that runs a process with an empty tmpfs over ``hidden`` (a cache other processes cannot see)."""
    script = f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"'
    for prefix in (["unshare", "--mount", "--propagation", "private"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = subprocess.run([*prefix, "sh", "-c", script, "true"], capture_output=True)
        if probe.returncode == 0:
            return [*prefix, "sh", "-c", script]
    return None


def test_a_cache_the_nodes_do_not_share_stops_the_run_naming_the_fix(driver, site, tmp_path):
    hidden = tmp_path / "shared"
    hidden.mkdir()
    wrapper = _private_mount_wrapper(hidden)
    if wrapper is None:
        pytest.skip("cannot make a private mount namespace here (unshare refused), so no node can be given its own cache")
    with LocalRayCluster(env={"PYTHONPATH": str(site)}, wrap=wrapper) as private:
        private.start_head()
        result = driver.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup",
                                             "--mb-tasks", "toy_math", "--mb-cache-dir", str(hidden / "cache"),
                                             "--mb-executor", "ray", "--mb-ray-address", private.address)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*mergebench: the artifact cache {hidden / 'cache'} is not shared with Ray node *: a probe "
                                 "file the driver wrote there (*) did not appear on that node. Every node must see the same "
                                 "cache: put --mb-cache-dir on storage that all nodes mount at the same path (NFS, Lustre, "
                                 "GPFS), or run without --mb-executor*"])
    assert not (hidden / "cache" / "builds.jsonl").exists() and not (hidden / "cache" / "base").exists()
