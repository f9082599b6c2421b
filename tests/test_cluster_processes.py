"""``--mb-executor processes``: the stage graph on a pool of worker processes on this machine.

The benchmark runs in a pytest subprocess, as a user runs it; its results must equal a serial
run's, each artifact must be built once, a worker killed mid-merge must be replaced and its merge
run again to a complete artifact, a stage that raises must fail only its own cases, and options
that cannot work must stop the run before anything starts. The scheduler's choices (which ready
stage a worker takes, how many threads it gets) are checked on a fake graph without processes.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from mergebench.cluster.graph import Stage, StageGraph
from mergebench.cluster.process_executor import ProcessExecutor, _Plan, _Worker
from mergebench.cluster.resources import GIB, Request
from tests.cluster_helpers import (
    FAILING_GRID,
    GRID,
    builds,
    check_killed_and_failing_merges,
    comparable,
    install_test_plugin,
    kill_first_merge,
)


def graph_of(*stages: Stage) -> StageGraph:
    return StageGraph(stages={s.id: s for s in stages}, cases={})


STAGES = (
    Stage("b", "base", "m", "base m"),
    Stage("t1", "train", "m", "expert m/math", deps=("b",)),
    Stage("t2", "train", "m", "expert m/coding", deps=("b",)),
    Stage("e0", "evaluate", "m", "eval m on x", deps=("b",), target="b"),
    Stage("g", "merge", "m", "merge m/ties", deps=("t1", "t2")),
    Stage("e1", "evaluate", "m", "eval m/ties on x", deps=("g",), target="g"),
    Stage("e2", "evaluate", "m", "eval m/ties on y", deps=("g",), target="g"),
    Stage("c", "case", "m", "case", deps=("e0", "e1")),
)


def test_the_plan_runs_training_first_keeps_a_workers_model_and_fails_everything_downstream():
    plan = _Plan.of(graph_of(*STAGES))
    assert plan.ready == ["b"]
    assert plan.take("") == "b"
    plan.finished("b")
    assert sorted(plan.ready) == ["e0", "t1", "t2"]
    assert [plan.take(""), plan.take("")] == ["t1", "t2"]  # training before the base's evaluation, in graph order
    plan.finished("t1")
    assert plan.ready == ["e0"]  # the merge waits for both experts
    plan.finished("t2")
    assert plan.take("") == "g"
    plan.finished("g")
    assert plan.take("b") == "e0"  # evaluations alike: the one about the model this worker holds
    assert plan.take("g") == "e1"
    assert sorted(plan.downstream("t1")) == ["c", "e1", "e2", "g"]
    assert sorted(plan.downstream("b")) == ["c", "e0", "e1", "e2", "g", "t1", "t2"]


class FakeInbox:
    def __init__(self) -> None:
        self.jobs: list = []

    def put(self, job) -> None:
        self.jobs.append(job)


def test_a_stage_gets_every_core_only_when_nothing_else_runs_or_waits():
    executor = ProcessExecutor(workers=2, cores=2)
    executor._plan = _Plan.of(graph_of(*STAGES))
    executor._settings = {}
    executor._pool = [_Worker(0, None, FakeInbox()), _Worker(1, None, FakeInbox())]
    executor._dispatch()
    (job,) = executor._pool[0].inbox.jobs + executor._pool[1].inbox.jobs
    assert job[0] == "b" and job[3] == 2  # the base alone: both cores
    executor._pool[0].stage = None
    executor._plan.finished("b")
    executor._dispatch()
    jobs = executor._pool[0].inbox.jobs[1:] + executor._pool[1].inbox.jobs
    assert [(j[0], j[3]) for j in jobs] == [("t1", 1), ("t2", 1)]  # two experts side by side, one thread each


def test_requests_this_machine_cannot_meet_are_refused_with_the_way_out():
    executor = ProcessExecutor(workers=2)
    assert executor.unfit(Request(memory=GIB)) is None
    assert "use -n auto (pytest-xdist)" in executor.unfit(Request(gpus=1))
    assert "of memory" in executor.unfit(Request(memory=1 << 60))
    with pytest.raises(Exception, match="--mb-workers must be 1 or more"):
        ProcessExecutor(workers=-1)


@pytest.mark.parametrize("args, message", [
    (("--mb-workers", "2"), "--mb-workers is an option of --mb-executor processes; add that option (the executor now is local)"),
    (("--mb-executor", "processes", "--mb-workers", "0"), "--mb-workers takes a count of 1 or more"),
    (("--mb-executor", "ray", "--mb-worker-threads", "1"), "--mb-worker-threads is an option of --mb-executor processes"),
])
def test_worker_counts_that_cannot_apply_are_usage_errors(bench, args, message):
    run = bench.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--co", *args)
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert message in run.stderr.str()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_tiny_grid_on_two_worker_processes_equals_a_serial_run_and_builds_each_artifact_once(bench, tmp_path,
                                                                                               monkeypatch):
    monkeypatch.setenv("MERGEBENCH_PROGRESS", "lines")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # sums over threads split by their count: compare at one thread each
    serial_run = bench.runpytest_subprocess(*GRID, "--mb-cache-dir", str(tmp_path / "serial"), "--mb-json",
                                            str(tmp_path / "serial.json"))
    assert serial_run.ret == 0, serial_run.outlines[-30:]
    serial = comparable(tmp_path / "serial.json")
    run = bench.runpytest_subprocess(*GRID, "--mb-cache-dir", str(tmp_path / "pool"), "--mb-json", str(tmp_path / "pool.json"),
                                     "--mb-executor", "processes", "--mb-workers", "2", "--mb-worker-threads", "1")
    assert run.ret == 0, run.outlines[-30:]
    run.assert_outcomes(passed=12)
    assert comparable(tmp_path / "pool.json") == serial

    per_artifact = Counter((b["stage"], b["digest"]) for b in builds(tmp_path / "pool"))
    assert max(per_artifact.values()) == 1, [k for k, n in per_artifact.items() if n > 1]
    assert sorted(per_artifact) == sorted({(s, d) for case in serial.values() for s, d in case["artifacts"]})
    assert len({b["pid"] for b in builds(tmp_path / "pool")}) == 2  # both workers built something

    run.stdout.fnmatch_lines(["mergebench: * stages submitted to processes (base 1, train 6, statistics 1, merge 3, "
                              "evaluate *, case 12) *s after the start*"])
    summary = [line for line in run.outlines if line.startswith("mergebench cluster (processes)")]
    assert summary and "0 failed" in summary[0] and "ran on 2 worker processes: " in summary[0], summary
    assert "(worker 0)" in summary[0] and "(worker 1)" in summary[0], summary


@pytest.fixture
def seeded(tmp_path) -> Path:
    """A cache holding tiny-llama's base and experts (the merges are what these tests are about)."""
    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.pipeline import Pipeline, RunContext

    root = tmp_path / "cache"
    pipeline = Pipeline(RunContext(cache=ArtifactCache(root)), plugin_manager.registries())
    pipeline.experts(pipeline.registries.models.get("tiny-llama"))
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_killed_mid_merge_is_replaced_and_a_failing_stage_fails_only_its_cases(bench, seeded, tmp_path, monkeypatch):
    site = install_test_plugin(tmp_path / "site")
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("MB_TEST_MARKERS", str(markers))
    monkeypatch.setenv("MERGEBENCH_PROGRESS", "lines")
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_merge, args=(markers, killed, stop), daemon=True)
    killer.start()
    run = bench.runpytest_subprocess(*FAILING_GRID, "--mb-cache-dir", str(seeded),
                                     "--mb-executor", "processes", "--mb-workers", "2", "--mb-json", str(tmp_path / "out.json"))
    stop.set()
    check_killed_and_failing_merges(run, seeded, killed, tmp_path / "out.json")
