"""The Ray test cluster's start-up retry, with a stand-in for ``ray`` (no Ray needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests import cluster_helpers
from tests.cluster_helpers import LocalRayCluster

FLAKY_RAY = """#!/bin/sh
# fails its first {failures} start(s) the way Ray 2.60's raylet aborts under load, then comes up and blocks
count=$(cat "{counter}" 2>/dev/null || echo 0)
echo $((count + 1)) > "{counter}"
echo "args: $*"
if [ "$count" -lt {failures} ]; then
  echo "raylet: Check failed: WaitForDashboardAgentPorts"
  exit 1
fi
echo "Ray runtime started."
exec sleep 120
"""


def flaky_ray(tmp_path: Path, monkeypatch, failures: int) -> Path:
    script = tmp_path / "ray"
    script.write_text(FLAKY_RAY.format(failures=failures, counter=tmp_path / "starts"))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(cluster_helpers, "ray_command", lambda: str(script))
    return tmp_path / "starts"


def test_a_ray_start_that_aborts_is_started_again_with_fresh_ports(tmp_path, monkeypatch):
    starts = flaky_ray(tmp_path, monkeypatch, failures=1)
    with LocalRayCluster() as cluster:
        cluster.start_head()
        assert starts.read_text().strip() == "2"
        first, second = (log.read_text() for log in cluster.logs)
        assert "WaitForDashboardAgentPorts" in first and "Ray runtime started" in second
        assert f"--port={cluster.port}" in second and f"--port={cluster.port}" not in first
        running = cluster.processes[-1]
        assert running.poll() is None
    assert running.poll() is not None  # stop() ended the attempt that came up


def test_a_node_that_never_starts_fails_with_every_attempts_log(tmp_path, monkeypatch):
    flaky_ray(tmp_path, monkeypatch, failures=99)
    with LocalRayCluster() as cluster, pytest.raises(RuntimeError) as raised:
        cluster.start_head()
    message = str(raised.value)
    assert message.startswith("ray start (head) did not come up")
    assert message.count("WaitForDashboardAgentPorts") == cluster_helpers.START_ATTEMPTS
    assert "attempt 3 (exited 1)" in message
