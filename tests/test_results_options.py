"""Saving, comparing and gating results, and xdist on faked GPUs, as a user runs them with pytest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

TINY = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math,toy_coding"]
TWO_METHODS = ["--mb-methods", "soup,task_arithmetic"]


def test_save_names_runs_by_machine_commit_date_and_tag(bench):
    result = bench.runpytest_subprocess(*TINY, "--mb-methods", "soup", "--mb-save", "nightly")
    result.assert_outcomes(passed=2)
    (saved,) = (bench.path / ".mergebench").glob("*.json")
    assert saved.name.endswith("-nightly.json") and saved.name.count("-") >= 4
    payload = json.loads(saved.read_text())
    assert payload["meta"]["tag"] == "nightly" and payload["meta"]["mergebench_version"]
    case = payload["cases"][0]
    assert case["keys"]["merged"] and case["method_version"] and case["task_version"]
    assert (bench.path / ".mergebench" / (saved.stem + "-performance-vs-time.png")).is_file()


def test_wrong_option_combinations_are_usage_errors(bench, tmp_path):
    result = bench.runpytest_subprocess(*TINY, "--mb-compare-fail", "normalized:2%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mb-compare-fail needs --mb-compare*"])
    result = bench.runpytest_subprocess(*TINY, "--mb-compare", "--mb-compare-fail", "normalised:2%")
    result.stderr.fnmatch_lines(["*KIND one of normalized*"])
    result = bench.runpytest_subprocess(*TINY, "--mb-compare", "--mb-compare-fail", "normalized:2%", "--mb-compare-alpha", "5")
    result.stderr.fnmatch_lines(["*--mb-compare-alpha 5.0: the gate's level must be in (0, 0.5], e.g. 0.05*"])
    result = bench.runpytest_subprocess(*TINY, "--mb-checkpoint", str(tmp_path), "--mb-methods", "soup")
    result.stderr.fnmatch_lines(["*--mb-checkpoint evaluates an existing merged model*--mb-methods*"])
    result = bench.runpytest_subprocess("--mb-suite", "tiny", "--mb-checkpoint", str(tmp_path))
    result.stderr.fnmatch_lines(["*--mb-checkpoint needs exactly one base model*got 2*"])


def _degrade(source: Path, target: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(str(target / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    save_file({k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()},
              str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_a_degraded_checkpoint_fails_the_gate_and_the_real_one_passes(bench, tmp_path):
    merged = bench.runpytest_subprocess(*TINY, "--mb-methods", "task_arithmetic", "--mb-json", str(tmp_path / "m.json"))
    merged.assert_outcomes(passed=2)
    digest = json.loads((tmp_path / "m.json").read_text())["cases"][0]["keys"]["merged"]
    checkpoint = tmp_path / "cache" / "merged" / digest

    gate = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math,toy_coding"]
    baseline = bench.runpytest_subprocess(*gate, "--mb-checkpoint", str(checkpoint), "--mb-save", "release")
    baseline.assert_outcomes(passed=2)
    ok = bench.runpytest_subprocess(*gate, "--mb-checkpoint", str(checkpoint), "--mb-compare", "release",
                                    "--mb-compare-fail", "normalized:2%")
    assert ok.ret == 0, ok.stdout.str()
    ok.stdout.fnmatch_lines([
        "*mergebench comparison*",
        "*gate: one-sided bootstrap test at α 0.05*",
        "*normalized*100.0%*100.0%*+0.0pp*[[]0.0, 0.0[]]*1.000*pp*",  # no drop on any resample: p = 1
        "normalized:2% on tiny-llama · checkpoint normalized: with 5 items this gate sees drops of *pp or more "
        "(80% power); its threshold allows 2.0pp*",
        "*no regression past --mb-compare-fail*",
    ])

    degraded = _degrade(checkpoint, tmp_path / "degraded")
    bad = bench.runpytest_subprocess(*gate, "--mb-checkpoint", str(degraded), "--mb-compare", "release",
                                     "--mb-compare-fail", "normalized:2%", "--mb-compare-fail", "task:toy_math:0.01")
    assert bad.ret == pytest.ExitCode.TESTS_FAILED
    bad.stdout.fnmatch_lines([
        "*Compared with *-release.json*",
        "*tiny-llama · checkpoint*",
        "*normalized*100.0%*FAILED*",
        "REGRESSION tiny-llama · checkpoint normalized: 100.0% → * breaks normalized:2%: drop *pp (95% interval [[]*, *[]]), "
        "p<0.001 < α 0.05, paired on 5 items; with 5 items this gate sees drops of *pp or more",
        "*value(s) regressed past --mb-compare-fail; failing the run*",
    ])
    bad.stdout.fnmatch_lines(["REGRESSION tiny-llama · checkpoint task:toy_math: * breaks task:toy_math:0.01: drop *"])


def test_xdist_workers_each_get_their_own_gpu_and_forward_progress(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEBENCH_FAKE_GPUS", "3,5")
    result = bench.runpytest_subprocess(*TINY, *TWO_METHODS, "-n", "2", "--mb-json", str(tmp_path / "r.json"))
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["[[]gw*[]]*: bits_per_byte*cache:*"])  # a worker's progress line reached the terminal
    assert "[built]" in result.stdout.str()
    payload = json.loads((tmp_path / "r.json").read_text())
    cases = payload["cases"]
    assert all(c["items"]["merged"] in payload["item_values"] for c in cases)  # per-item values came off the workers
    result.stdout.fnmatch_lines(["*overall*●*", "*Below each value: its 95% interval*"])
    assignment = {c["device"]["worker"]: c["device"]["cuda_visible_devices"] for c in cases}
    assert assignment == {"gw0": "3", "gw1": "5"}
    assert {c["device"]["device"] for c in cases} == {"cpu"}  # no real GPU here: the faked ones are only assigned


def test_auto_worker_count_follows_the_gpus(bench, monkeypatch):
    monkeypatch.setenv("MERGEBENCH_FAKE_GPUS", "0,1,2")
    result = bench.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math",
                                        "--mb-methods", "soup", "-n", "auto")
    result.stdout.fnmatch_lines(["created: 3/3 workers"])


def test_a_comparison_names_unmatched_cases_and_a_missing_baseline_is_a_usage_error(bench):
    one = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup"]
    bench.runpytest_subprocess(*one, "--mb-tasks", "toy_math", "--mb-save", "base").assert_outcomes(passed=1)
    result = bench.runpytest_subprocess(*one, "--mb-tasks", "toy_coding", "--mb-compare", "base")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*mergebench comparison*", "only in the baseline: tiny-llama-soup-toy_math",
                                 "new in this run: tiny-llama-soup-toy_coding",
                                 "ITEMS DIFFER from the baseline*other tasks (the baseline: toy_math; this run: toy_coding)*"])
    other_method = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "task_arithmetic"]
    nothing = bench.runpytest_subprocess(*other_method, "--mb-tasks", "toy_math", "--mb-compare", "base",
                                         "--mb-compare-fail", "normalized:2%")
    assert nothing.ret == pytest.ExitCode.TESTS_FAILED
    nothing.stdout.fnmatch_lines(["mergebench: the gate compared nothing: *-base.json shares no (model, method) with this run*"])
    missing = bench.runpytest_subprocess(*one, "--mb-tasks", "toy_coding", "--mb-compare", "nightly")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stdout.fnmatch_lines(["mergebench: cannot compare: no saved run 'nightly' in *"])
    assert "mergebench comparison" not in missing.stdout.str()


def test_a_baseline_saved_before_per_item_values_is_gated_on_point_estimates_and_says_so(bench):
    one = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup", "--mb-tasks", "toy_math"]
    bench.runpytest_subprocess(*one, "--mb-save", "old").assert_outcomes(passed=1)
    (saved,) = (bench.path / ".mergebench").glob("*-old.json")
    payload = json.loads(saved.read_text())
    older = {"mergebench_results": 1, "meta": payload["meta"],
             "cases": [{k: v for k, v in c.items() if k != "items"} for c in payload["cases"]]}
    saved.write_text(json.dumps(older))
    result = bench.runpytest_subprocess(*one, "--mb-compare", "old", "--mb-compare-fail", "task:1%")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "POINT RULE for 1 gated value(s): the baseline has no per-item values for toy_math (saved before mergebench "
        "kept per-item values; save a new baseline with --mb-save); they fail on the point estimate alone",
        "*no regression past --mb-compare-fail*",
    ])
