"""``--mb-executor slurm`` through submitit: the stage graph in waves of jobs, here on submitit's local executor.

No Slurm exists on this machine: ``--mb-slurm-cluster local`` runs each job as a process here, through
the same submitit job objects and the same waves. The Slurm settings are checked by submitit's own
SlurmExecutor parameter validation, which needs no Slurm to run.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from mergebench.cluster.resources import GIB, Request
from mergebench.cluster.slurm_executor import SlurmSettings, job_cpus, parse_time, slurm_settings
from mergebench.errors import UsageError
from tests.cluster_helpers import GRID, builds, comparable, serial_reference

submitit = pytest.importorskip("submitit", reason="the cluster extra is not installed (pip install 'mergebench[cluster]')")



def options(**given):
    defaults = {"mb_slurm_config": None, "mb_slurm_option": [], "mb_slurm_partition": None, "mb_slurm_time": None,
                "mb_slurm_gpus": None, "mb_slurm_account": None, "mb_slurm_cluster": "slurm", "mb_slurm_group": "stage",
                "mb_slurm_parallel": None}
    values = {**defaults, **given}
    return SimpleNamespace(getoption=values.__getitem__)


@pytest.mark.parametrize("text, minutes", [(90, 90), ("90", 90), ("1:30:00", 90), ("0:00:30", 1), ("2-00:00:00", 2880)])
def test_time_limits_read_as_slurm_writes_them(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["soon", "1:30", "0", "-5"])
def test_a_time_limit_slurm_would_not_take_is_refused(text):
    with pytest.raises(UsageError, match="--mb-slurm-time"):
        parse_time(text)


def test_options_override_the_config_file_and_become_submitit_parameters(tmp_path):
    config = tmp_path / "slurm.toml"
    config.write_text('[slurm]\npartition = "cpu"\ntime = "2:00:00"\ngpus = 1\naccount = "proj"\nqos = "low"\n')
    settings = slurm_settings(options(mb_slurm_config=str(config), mb_slurm_partition="gpu", mb_slurm_option=["qos=high",
                                                                                                          "exclude=node3"]))
    assert (settings.partition, settings.time_minutes, settings.gpus, settings.account) == ("gpu", 120, 1, "proj")
    job = settings.job_parameters(Request(cpus=1, gpus=1, memory=int(5.2 * GIB)), "mb-evaluate")
    assert job == {"job_name": "mb-evaluate", "time": 120, "cpus_per_task": 1, "mem": "6G", "gpus_per_node": 1,
                   "partition": "gpu", "account": "proj", "qos": "high", "exclude": "node3"}
    assert "gpus_per_node" not in settings.job_parameters(Request(), "mb-merge")
    with pytest.raises(UsageError, match=r"has no \[slurm\] table"):
        (tmp_path / "empty.toml").write_text("partition = 'x'\n")
        slurm_settings(options(mb_slurm_config=str(tmp_path / "empty.toml")))
    with pytest.raises(UsageError, match="is not KEY=VALUE"):
        slurm_settings(options(mb_slurm_option=["qos"]))


def test_submitit_rejects_an_unknown_slurm_parameter_before_anything_is_submitted():
    from mergebench.cluster.slurm_executor import SlurmExecutor

    with pytest.raises(UsageError, match=r"submitit rejects the Slurm settings: Unavailable parameter\(s\): \['partion'\]; "
                                         r"fix the --mb-slurm-option/--mb-slurm-config entry"):
        SlurmExecutor(SlurmSettings(extra={"partion": "gpu"})).check_parameters()
    SlurmExecutor(SlurmSettings(partition="gpu", gpus=1, extra={"qos": "high"})).check_parameters()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_tiny_grid_through_submitits_local_executor_equals_a_serial_run(bench, tmp_path):
    serial = serial_reference(bench, GRID, tmp_path)
    # one job per model and wave: each job is a fresh process that imports torch, too slow on 2 cores one stage a job
    run = bench.runpytest_subprocess(*GRID, "--mb-cache-dir", str(tmp_path / "slurm"), "--mb-json", str(tmp_path / "slurm.json"),
                                     "--mb-executor", "slurm", "--mb-slurm-cluster", "local", "--mb-slurm-parallel", "2",
                                     "--mb-slurm-time", "30", "--mb-slurm-group", "model")
    assert run.ret == 0, run.outlines[-30:]
    run.assert_outcomes(passed=12)
    assert comparable(tmp_path / "slurm.json") == serial
    per_artifact = Counter((b["stage"], b["digest"]) for b in builds(tmp_path / "slurm"))
    assert max(per_artifact.values()) == 1 and Counter(s for s, _ in per_artifact)["merged"] == 3
    run.stdout.fnmatch_lines(["mergebench: * stages submitted to submitit local (*) *s after the start*",
                              "mergebench cluster (submitit local): * stages finished, 0 failed, *"])


@pytest.mark.slow
def test_a_rejected_option_or_a_missing_sbatch_stops_the_run_with_the_fix(bench, tmp_path, monkeypatch):
    result = bench.runpytest_subprocess(*GRID, "--mb-cache-dir", str(tmp_path / "c"), "--mb-executor", "slurm",
                                        "--mb-slurm-cluster", "local", "--mb-slurm-option", "partion=gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*mergebench: submitit rejects the Slurm settings: Unavailable parameter(s): ?'partion'?*"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    result = bench.runpytest_subprocess(*GRID, "--mb-cache-dir", str(tmp_path / "c"), "--mb-executor", "slurm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*mergebench: --mb-executor slurm submits with sbatch, which is not on this machine's PATH: "
                                 "run from a Slurm login node, or use --mb-slurm-cluster local*"])
    assert builds(tmp_path / "c") == []


def test_a_job_holds_one_stage_or_one_models_evaluations_or_a_whole_model_and_wave():
    from mergebench import plugin_manager
    from mergebench.cluster.graph import build_graph
    from mergebench.cluster.resources import request_for
    from mergebench.cluster.slurm_executor import SlurmExecutor
    from mergebench.selection import select_cases

    registries = plugin_manager.registries()
    graph = build_graph(select_cases(registries, suites=["tiny"], methods="soup,ties", tasks="toy_math,toy_coding"), registries)
    requests = {s.id: request_for(s.kind, "tiny", use_gpu=False) for s in graph.stages.values()}
    evaluations = [s for s in graph.stages.values() if s.kind == "evaluate"]
    per_stage = SlurmExecutor(SlurmSettings(group="stage"))._groups(evaluations, requests)
    # one job per evaluated model, with all its tasks (an expert is evaluated on its own domain's task only)
    assert sorted(len(stages) for stages, _ in per_stage) == sorted(Counter(s.target for s in evaluations).values())
    assert all(len({s.target for s in stages}) == 1 for stages, _ in per_stage) and max(map(len, (g for g, _ in per_stage))) == 2
    per_model = SlurmExecutor(SlurmSettings(group="model"))._groups(list(graph.stages.values()), requests)
    assert sorted(len(stages) for stages, _ in per_model) == sorted(Counter(s.model for s in graph.stages.values()).values())
    merges = [s for s in graph.stages.values() if s.kind == "merge"]
    assert [len(stages) for stages, _ in SlurmExecutor(SlurmSettings())._groups(merges, requests)] == [1] * len(merges)


def test_a_job_runs_torch_at_the_cpus_it_asked_slurm_for():
    import torch

    from mergebench.cluster.stages import run_stages

    before = torch.get_num_threads()
    request = Request(cpus=1.0, gpus=0.0, memory=GIB)
    try:
        assert SlurmSettings().job_parameters(request, "mb-train")["cpus_per_task"] == job_cpus(request) == 1
        torch.set_num_threads(2)
        assert run_stages({}, [], False, job_cpus(request)) == []
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
