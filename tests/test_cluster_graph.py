"""The cluster's plain parts: the stage graph, resource requests, the board, worker events and the probe's verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergebench import plugin_manager
from mergebench.cluster.board import Board
from mergebench.cluster.events import EventTail, EventWriter
from mergebench.cluster.graph import Stage, build_graph
from mergebench.cluster.probe import check_reports, node_probe, remove_probes, write_driver_probe
from mergebench.cluster.resources import GIB, PROCESS_BYTES, gpu_required, parameter_count, request_for
from mergebench.errors import UsageError
from mergebench.selection import select_cases

STATISTIC_METHODS = {"fisher", "regmean", "localize_stitch"}


def cases(**selection):
    return select_cases(plugin_manager.registries(), suites=["tiny"], **selection)


def graph_of(search: str = "none", **selection):
    return build_graph(cases(**selection), plugin_manager.registries(), search=search,
                       computes_statistics=STATISTIC_METHODS.__contains__)


def test_each_artifact_is_one_stage_and_each_case_waits_for_what_it_reads():
    graph = graph_of(models="tiny-llama", methods="soup,regmean", tasks="toy_math,toy_generate")
    assert graph.counts() == {"base": 1, "train": 5, "statistics": 1, "merge": 2, "evaluate": 8, "case": 4}
    # toy_math: the math expert is evaluated; toy_generate (instruction): the instruction expert
    assert {s.id for s in graph.stages.values() if s.kind == "evaluate"} == {
        "evaluate:merge:tiny-llama/soup@toy_math", "evaluate:merge:tiny-llama/regmean@toy_math",
        "evaluate:base:tiny-llama@toy_math", "evaluate:train:tiny-llama/math@toy_math",
        "evaluate:merge:tiny-llama/soup@toy_generate", "evaluate:merge:tiny-llama/regmean@toy_generate",
        "evaluate:base:tiny-llama@toy_generate", "evaluate:train:tiny-llama/instruction@toy_generate",
    }
    case = graph.stages[graph.cases["tiny-llama-regmean-toy_math"]]
    assert set(case.deps) == {"merge:tiny-llama/regmean", "evaluate:merge:tiny-llama/regmean@toy_math",
                              "evaluate:base:tiny-llama@toy_math", "evaluate:train:tiny-llama/math@toy_math"}
    assert graph.stages["merge:tiny-llama/regmean"].deps == (
        "base:tiny-llama", *(f"train:tiny-llama/{d}" for d in ("instruction", "math", "multilingual", "coding", "safety")),
        "statistics:tiny-llama/regmean")
    assert graph.stages["merge:tiny-llama/soup"].deps[-1] == "train:tiny-llama/safety"  # data-free: no statistics stage
    assert graph.stages["evaluate:train:tiny-llama/math@toy_math"].label == "eval tiny-llama/math on toy_math"
    assert graph.stages["evaluate:merge:tiny-llama/soup@toy_math"].label == "eval tiny-llama/soup on toy_math"
    order = list(graph.stages)
    assert all(order.index(d) < order.index(s.id) for s in graph.stages.values() for d in s.deps)


def test_hyperparameters_name_the_merge_and_search_replaces_the_statistics_stage():
    graph = graph_of(models="tiny-llama", methods="ties", tasks="toy_math", params=["ties.density=0.5"])
    [merge] = [s for s in graph.stages.values() if s.kind == "merge"]
    assert merge.id.startswith("merge:tiny-llama/ties{") and '"density":0.5' in merge.id
    searched = graph_of("grid", models="tiny-llama", methods="regmean", tasks="toy_math")
    assert "statistics" not in searched.counts() and searched.counts()["search"] == 1
    assert searched.stages[searched.cases["tiny-llama-regmean-toy_math"]].deps[0] == "merge:tiny-llama/regmean"
    assert "search:tiny-llama/regmean" in searched.stages[searched.cases["tiny-llama-regmean-toy_math"]].deps


def test_the_multi_task_model_and_an_existing_checkpoint_are_evaluated_like_a_merge(tmp_path):
    graph = graph_of(models="tiny-llama", methods="mtl", tasks="toy_math")
    assert "merge" not in graph.counts() and "train:tiny-llama/mtl" in graph.stages
    assert graph.stages["evaluate:train:tiny-llama/mtl@toy_math"].label == "eval tiny-llama/mtl on toy_math"
    checkpoint = graph_of(models="tiny-llama", tasks="toy_math", checkpoint=str(tmp_path))
    evaluation = checkpoint.stages[f"evaluate:checkpoint:{tmp_path}@toy_math"]
    assert evaluation.deps == () and "train:tiny-llama/safety" not in checkpoint.stages


def test_a_stage_survives_its_trip_as_json():
    graph = graph_of(models="tiny-llama", methods="ties", tasks="toy_math", params=["ties.density=0.5"])
    for stage in graph.stages.values():
        assert Stage.from_dict(json.loads(json.dumps(stage.to_dict()))) == stage


def test_builds_are_credited_to_the_first_case_that_needs_them_and_waves_respect_dependencies():
    graph = graph_of(models="tiny-llama", methods="soup,ties", tasks="toy_math,toy_coding")
    first = graph.first_case_of()
    assert first["base:tiny-llama"] == first["merge:tiny-llama/soup"] == first["evaluate:base:tiny-llama@toy_math"] \
        == list(graph.cases)[0]
    assert first["evaluate:base:tiny-llama@toy_coding"] == next(c for c in graph.cases if c.endswith("toy_coding"))
    waves = graph.waves()
    placed = {s.id: i for i, wave in enumerate(waves) for s in wave}
    assert all(placed[d] < placed[s.id] for s in graph.stages.values() for d in s.deps)
    assert [s.kind for s in waves[0]] == ["base"] and {s.kind for s in waves[-1]} == {"case"}


@pytest.mark.parametrize("size, count", [("9B", 9_000_000_000), ("135M", 135_000_000), ("2.5b", 2_500_000_000),
                                         ("tiny", 0), ("", 0)])
def test_model_sizes_are_read_from_the_spec(size, count):
    assert parameter_count(size) == count


def test_requests_take_a_gpu_where_one_exists_and_size_memory_from_the_model():
    assert request_for("merge", "9B", use_gpu=True) == request_for("merge", "9B", use_gpu=False)
    merge = request_for("merge", "9B", use_gpu=True)
    assert (merge.gpus, merge.memory) == (0.0, PROCESS_BYTES + int(1.5 * 36e9))
    evaluation = request_for("evaluate", "9B", use_gpu=True)
    assert evaluation.gpus == 1.0 and evaluation.memory == PROCESS_BYTES + int(1.5 * 36e9)
    assert request_for("train", "135M", use_gpu=False).memory == PROCESS_BYTES + int(4 * 540e6)
    assert request_for("case", "9B", use_gpu=True) == request_for("case", "tiny", use_gpu=True)
    assert request_for("train", "135M", use_gpu=False).describe() == f"1 CPU, {(PROCESS_BYTES + 2.16e9) / GIB:.1f} GiB"
    assert gpu_required("evaluate", "cuda:1", "hf") and gpu_required("train", "cuda", "hf")
    assert not gpu_required("merge", "cuda", "hf") and not gpu_required("evaluate", "auto", "hf")
    assert gpu_required("evaluate", "auto", "vllm") and not gpu_required("train", "auto", "vllm")


def test_the_board_counts_done_running_and_queued_per_kind_with_each_running_stages_node(tmp_path):
    graph = graph_of(models="tiny-llama", methods="soup,ties,regmean", tasks="toy_math")
    board = Board(graph)
    writer = EventWriter(tmp_path, "node-a-12")
    writer.emit(ev="stage", state="start", id="merge:tiny-llama/soup", node="node-a", pid=12)
    writer.emit(ev="stage", state="start", id="merge:tiny-llama/ties", node="node-b", pid=13)
    writer.note("  [built] merge tiny-llama/soup in 0.1s")
    with writer.bar("merge", 10, "tensors") as bar:  # inner bars are not sent
        bar.advance(5)
    tail = EventTail(tmp_path)
    notes = board.apply(tail.read())
    assert notes == [("node-a-12", "  [built] merge tiny-llama/soup in 0.1s")]
    board.finish("merge:tiny-llama/soup", ok=True)
    board.finish("merge:tiny-llama/regmean", ok=False)
    [merge] = [row for row in board.status() if row.kind == "merge"]
    assert (merge.total, merge.done, merge.failed, merge.queued) == (3, 2, 1, 0)
    assert merge.running == [("merge tiny-llama/ties", "node-b")]
    line = [ln for ln in board.lines(now=board.started + 12) if "cluster merge" in ln][0]
    assert line == "  cluster merge: 2/3 stages (67%), 12s; 1 running (merge tiny-llama/ties [node-b]), 1 failed"
    assert tail.read() == []  # nothing new since the last read
    with open(writer.path, "a") as handle:
        handle.write('{"ev": "stage", "state": "end", "id": "merge:tiny-llama/ties"')  # a line still being written
    assert tail.read() == []
    with open(writer.path, "a") as handle:
        handle.write(', "node": "node-b"}\n')
    board.apply(tail.read())
    assert board.running == {}


def test_the_probe_passes_when_both_sides_see_each_other(tmp_path):
    nonce = "abc123"
    write_driver_probe(tmp_path, nonce)
    report = node_probe(str(tmp_path), nonce, {"models": ["tiny-llama"], "methods": ["soup", "regmean"], "tasks": ["toy_math"]})
    assert report["sees_driver"] and report["missing"] == {"models": [], "methods": [], "tasks": []}
    assert report["statistics"] == ["regmean"]
    check_reports(tmp_path, nonce, [report], where="Ray")
    remove_probes(tmp_path, nonce)
    assert not (tmp_path / "cluster" / "probes").exists()


def test_the_probe_names_the_fix_when_the_cache_is_not_shared_or_a_node_differs(tmp_path: Path):
    nonce = "n1"
    write_driver_probe(tmp_path, nonce)
    elsewhere = node_probe(str(tmp_path / "elsewhere"), nonce, {}, wait_seconds=0.1)  # a node with a cache of its own
    assert not elsewhere["sees_driver"]
    with pytest.raises(UsageError, match=r"the artifact cache .* is not shared with Ray node .*: a probe file the driver "
                                         r"wrote there .* did not appear on that node\. Every node must see the same cache"):
        check_reports(tmp_path, nonce, [elsewhere], where="Ray")
    unseen = {**node_probe(str(tmp_path), nonce, {}), "pid": 1}  # wrote its file where the driver does not look
    with pytest.raises(UsageError, match=r"the probe file that node wrote \(.*\) does not appear here"):
        check_reports(tmp_path, nonce, [unseen], where="Slurm", wait_seconds=0.1)
    older = {**node_probe(str(tmp_path), nonce, {}), "mergebench_version": "0.0.1"}
    with pytest.raises(UsageError, match=r"runs mergebench 0\.0\.1, the driver .*; install the same mergebench"):
        check_reports(tmp_path, nonce, [older], where="Ray")
    lacking = node_probe(str(tmp_path), nonce, {"methods": ["soup", "mean_of_two"], "tasks": ["toy_math"]})
    with pytest.raises(UsageError, match=r"does not know method 'mean_of_two': install the same mergebench plugins"):
        check_reports(tmp_path, nonce, [lacking], where="Ray")


def test_a_case_is_credited_with_the_builds_a_serial_run_would_have_made_in_it(tmp_path):
    from mergebench.cluster.run import ClusterRun
    from mergebench.cluster.stages import RunSettings

    selected = cases(models="tiny-llama", methods="soup", tasks="toy_math,toy_coding")
    run = ClusterRun(None, RunSettings(cache_root=str(tmp_path), run_id="r"), plugin_manager.registries(), selected)
    run.graph = build_graph(selected, plugin_manager.registries())
    run._first_case = run.graph.first_case_of()
    first, second = list(run.graph.cases)

    def event(stage, digest, hit, seconds=0.0):
        return {"stage": stage, "digest": digest, "label": digest, "hit": hit, "seconds": seconds}

    run.outcomes = {stage_id: {"events": []} for stage_id in run.graph.stages}
    run.outcomes["base:tiny-llama"]["events"] = [event("base", "b", False, 2.0)]
    run.outcomes["merge:tiny-llama/soup"]["events"] = [event("base", "b", True), event("merged", "m", False, 1.0)]
    worker_record = [event("merged", "m", True), event("eval", "e", True)]  # what run_case saw on its worker: all reused
    for stage_id in run.graph.cases.values():
        run.outcomes[stage_id]["result"] = {"case_id": stage_id, "artifacts": worker_record}
    credited = run._credit_builds(first, dict(run.outcomes[run.graph.cases[first]]["result"]))["artifacts"]
    assert credited == [event("base", "b", False, 2.0), event("merged", "m", False, 1.0), event("eval", "e", True)]
    assert run._credit_builds(second, dict(run.outcomes[run.graph.cases[second]]["result"]))["artifacts"] == worker_record


def test_a_refused_ray_token_is_explained_and_other_connection_errors_are_not():
    from mergebench.cluster.ray_executor import _auth_hint, _first_line

    refused = RuntimeError("Failed to connect to GCS: RPC error: InvalidAuthToken: Authentication token is missing\nmore")
    assert _first_line(refused) == "Failed to connect to GCS: RPC error: InvalidAuthToken: Authentication token is missing"
    assert _auth_hint(refused).startswith("; the cluster requires a token: run with RAY_AUTH_MODE=token")
    assert _auth_hint(ConnectionError("version mismatch: the cluster runs Ray 2.50")) == ""
