"""The whole pipeline on the tiny suite, as a user runs it: pytest cases, reuse, JSON, xdist."""

from __future__ import annotations

import json
import re

import pytest

TINY = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math,toy_coding,toy_generate",
        "--mb-methods", "soup,task_arithmetic"]


def table(output: str) -> str:
    """The results tables without the run-dependent cache line."""
    text = output.split("mergebench results", 1)[1]
    return "\n".join(line for line in text.splitlines() if not re.match(r"^(artifacts:|results written|=+ \d+ passed)", line))


def test_second_run_reuses_every_artifact_and_json_has_every_case(bench, tmp_path):
    first = bench.runpytest_subprocess(*TINY, "--mb-json", str(tmp_path / "r1.json"))
    first.assert_outcomes(passed=6)
    first.stdout.fnmatch_lines(["*artifacts: 0 reused from cache, * built in this run*"])
    second = bench.runpytest_subprocess(*TINY, "--mb-json", str(tmp_path / "r2.json"))
    second.assert_outcomes(passed=6)
    second.stdout.fnmatch_lines(["*artifacts: * reused from cache, 0 built in this run*"])
    assert "[built]" not in second.stdout.str()
    second.stdout.fnmatch_lines(["*tiny-llama-soup-toy_math: bits_per_byte * cache: * artifacts reused, 0 built*"])
    cases = json.loads((tmp_path / "r2.json").read_text())["cases"]
    assert sorted(c["case_id"] for c in cases) == sorted(
        f"tiny-llama-{m}-{t}" for m in ("soup", "task_arithmetic") for t in ("toy_math", "toy_coding", "toy_generate")
    )
    case = next(c for c in cases if c["case_id"] == "tiny-llama-soup-toy_math")
    assert case["reference"] == "expert" and case["higher_is_better"] is False
    assert case["normalized"] == pytest.approx(case["expert"]["score"] / case["merged"]["score"])
    first_scores = {c["case_id"]: c["merged"]["score"] for c in json.loads((tmp_path / "r1.json").read_text())["cases"]}
    assert first_scores == {c["case_id"]: c["merged"]["score"] for c in cases}


def test_xdist_gives_the_same_table_as_a_single_process(bench):
    serial = bench.runpytest_subprocess(*TINY)
    serial.assert_outcomes(passed=6)
    parallel = bench.runpytest_subprocess(*TINY, "-n", "2")
    parallel.assert_outcomes(passed=6)
    assert table(parallel.stdout.str()) == table(serial.stdout.str())
    assert "normalized performance" in table(serial.stdout.str())


def test_an_unreachable_hub_model_fails_the_case_with_the_fix(bench, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = bench.runpytest_subprocess("--mb-models", "gemma-2-2b-it", "--mb-methods", "soup", "--mb-tasks", "toy_math")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*HubUnavailableError: cannot fetch google/gemma-2-2b-it from the Hugging Face Hub*--mb-model-root DIR*"])


def test_the_multi_task_baseline_is_trained_once_and_scored_like_a_merge(bench, tmp_path):
    args = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math,toy_coding", "--mb-methods", "mtl"]
    result = bench.runpytest_subprocess(*args, "--mb-json", str(tmp_path / "r.json"))
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("[built] multi-task model tiny-llama") == 1
    cases = {c["task"]: c for c in json.loads((tmp_path / "r.json").read_text())["cases"]}
    for case in cases.values():
        assert case["method"] == "mtl" and case["params"] == {"recipe": "synthetic-mtl"}
        assert case["merge_seconds"] > 0, "the baseline's cost is its training time"
        assert case["normalized"] == pytest.approx(case["expert"]["score"] / case["merged"]["score"])  # bits per byte: lower is better
    assert cases["toy_math"]["keys"]["merged"] == cases["toy_coding"]["keys"]["merged"]
    result.stdout.fnmatch_lines(["*each expert vs the base on its own domain*"])


def test_each_model_carries_its_name_into_its_evaluations(cache):
    from mergebench import plugin_manager
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    pipeline = Pipeline(RunContext(cache=cache), registries)
    model, task = registries.models.get("tiny-llama"), registries.tasks.get("toy_math")
    base = pipeline.base(model)
    expert = pipeline.expert(model, "math", base)
    refs = [base, expert, pipeline.mtl(model, base), pipeline.checkpoint(expert.path)]
    assert [r.name for r in refs] == ["tiny-llama", "tiny-llama/math", "tiny-llama/mtl", expert.path.name]
    assert [r.label for r in refs[:3]] == ["base tiny-llama", "expert tiny-llama/math", "multi-task model tiny-llama"]
    for ref in refs:
        pipeline.evaluate(ref, task)
    assert [e.label for e in cache.events if e.stage == "eval"] == [f"eval {r.name} on toy_math" for r in refs]


def test_a_column_of_one_name_running_another_method_is_another_merge(cache):
    """A --mb-mergekit-config column is named by the user: reusing the name for a config that runs another
    method with the same settings must not find the first config's merge in the cache."""
    import dataclasses

    from mergebench import plugin_manager
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    pipeline = Pipeline(RunContext(cache=cache), registries)
    model = registries.models.get("tiny-llama")
    soup, linear = registries.methods.get("soup"), registries.methods.get("linear")
    column = dataclasses.replace(soup, name="mine", hyperparams=(), semantics=(), domains=("math", "coding"))
    as_linear = dataclasses.replace(column, impl=linear.impl)
    keys = [pipeline._merge_inputs(model, spec, {}).key for spec in (column, as_linear)]
    assert keys[0]["impl"] == soup.impl and keys[1]["impl"] == linear.impl
    assert {k: v for k, v in keys[0].items() if k != "impl"} == {k: v for k, v in keys[1].items() if k != "impl"}
    assert "impl" not in pipeline._merge_inputs(model, soup, {}).key  # built-in methods' keys unchanged
