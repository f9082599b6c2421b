"""The semantics switch: declarations, cache keys, the command line, the report and the pytest option."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mergebench import plugin_manager
from mergebench.cache import ArtifactKey
from mergebench.errors import UsageError
from mergebench.results import CaseResult, Score
from mergebench.results.gating import compare
from mergebench.results.report import render_session
from tests.helpers import load_tensors
from tests.test_study_code_methods import assert_same, study_ties

# The resolved defaults every built-in had before the study-code knobs existed: what their merged keys hold.
KEYED_BEFORE = {
    "soup": {}, "task_arithmetic": {"scaling": 0.3}, "fisher": {"samples": 1000},
    "regmean": {"alpha": 0.9, "samples": 1000}, "ties": {"scaling": 1.0, "density": 0.2, "scope": "global"},
    "dare": {"scaling": 1.0, "p": 0.8}, "consensus": {"scaling": 1.0, "mask_lambda": 0.5, "k": 2},
    "localize_stitch": {"density": 0.1, "sigmoid_bias": 3.0, "lr": 1e8, "epochs": 1, "l1": 0.0, "samples": 1000},
    "dataless_localize_stitch": {"density": 0.1, "scope": "global"}, "slerp": {"t": 0.5},
    "della": {"scaling": 1.0, "density": 0.2, "epsilon": 0.1},
    "breadcrumbs": {"scaling": 1.0, "density": 0.9, "gamma": 0.01, "scope": "tensor"}, "model_stock": {},
    "tsv": {"scaling": 1.0}, "iso_c": {"scaling": 1.0}, "iso_cts": {"scaling": 1.0, "common_fraction": 0.8},
}


def methods():
    return plugin_manager.registries().methods


def test_paper_defaults_key_merges_as_before_the_knobs_existed():
    for spec in methods().specs():
        if spec.name in KEYED_BEFORE:
            assert spec.key_params(spec.resolve_params({})) == KEYED_BEFORE[spec.name], spec.name


def test_every_built_in_default_names_its_source():
    for spec in methods().specs():
        for hp in spec.hyperparams:
            assert len(hp.source) > 10, f"{spec.name}.{hp.name} has no source"


def test_a_semantics_fixes_values_and_refuses_contradictions():
    ties = methods().get("ties")
    assert ties.resolve_params({"scaling": 0.5}, "study-code")["merge_func"] == "sum"
    with pytest.raises(UsageError, match=r"merge_func='mean' contradicts the study-code semantics, which fixes "
                                         r"merge_func='sum'; drop that parameter, or use the paper semantics"):
        ties.resolve_params({"merge_func": "mean"}, "study-code")
    with pytest.raises(UsageError, match=r"method 'slerp' has no study-code form \(it declares none\)"):
        methods().get("slerp").resolve_params({}, "study-code")
    with pytest.raises(UsageError, match=r"method 'localize_stitch' has no study-code form \(the study trains each "
                                         r"mask inside an SFT run that also updates the weights"):
        methods().get("localize_stitch").resolve_params({}, "study-code")
    with pytest.raises(UsageError, match="unknown semantics 'studycode'; choose one of paper, study-code"):
        ties.resolve_params({}, "studycode")


def test_the_study_code_key_differs_and_the_paper_key_is_unchanged(cache):
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    model, ties = registries.models.get("tiny-llama"), registries.methods.get("ties")
    paper = Pipeline(RunContext(cache=cache), registries)
    ref, _ = paper.merged(model, ties, ties.resolve_params({}))
    inputs = paper._merge_inputs(model, ties, ties.resolve_params({}))
    assert "semantics" not in inputs.key
    assert ref.key == ArtifactKey.of("merged", {**inputs.key, "params": KEYED_BEFORE["ties"]})
    study = Pipeline(RunContext(cache=cache, semantics="study-code"), registries)
    other, _ = study.merged(model, ties, ties.resolve_params({}, "study-code"))
    assert other.key != ref.key and cache.read_meta(other.key)["inputs"]["semantics"] == "study-code"
    from safetensors import safe_open

    with safe_open(str(next(other.path.glob("*.safetensors"))), "pt") as handle:
        assert handle.metadata()["mergebench_semantics"] == "study-code"


def test_cli_merge_with_study_code_semantics_is_the_studys_ties(tiny_llama, tiny_experts, tmp_path):
    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "merge", "--method", "ties", "--semantics", "study-code",
                           "--base", str(tiny_llama), *[f"--expert={d}={p}" for d, p in tiny_experts.items()],
                           "--param", "density=0.3", "--param", "scaling=0.5", "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "(study-code semantics)" in done.stdout and "'merge_func': 'sum'" in done.stdout
    expected = study_ties(load_tensors(tiny_llama), [load_tensors(p) for p in tiny_experts.values()], 0.3, 0.5)
    assert_same(load_tensors(out), expected)
    assert "mergebench_semantics: `study-code`" in (out / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--method", "localize_stitch"], "method 'localize_stitch' has no study-code form (the study trains"),
    (["--method", "consensus", "--param", "mask_lambda=0.4"], "mask_lambda=0.4 contradicts the study-code semantics"),
    (["--mergekit-config", "ties.yml"], "--semantics study-code applies to --method; a --mergekit-config merges as"),
])
def test_cli_refuses_what_the_study_code_cannot_do_before_writing(args, message, tiny_llama, tiny_experts, tmp_path):
    done = subprocess.run([sys.executable, "-m", "mergebench.cli", "merge", "--semantics", "study-code", *args,
                           "--base", str(tiny_llama), *[f"--expert={d}={p}" for d, p in tiny_experts.items()],
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def result(method: str, semantics: str, score: float = 0.5) -> CaseResult:
    return CaseResult(case_id=f"m-{method}-t", model="m", method=method, task="t", domain="math", metric="acc",
                      higher_is_better=True, params={}, merged=Score(score, 0.1, 10), expert=Score(0.8, 0.1, 10),
                      base=Score(0.2, 0.1, 10), reference="expert", normalized=score / 0.8, merge_seconds=1.0,
                      semantics=semantics)


def test_the_report_names_the_semantics_and_never_mixes_them_in_one_table():
    one = render_session([result("ties", "paper")])
    assert one.splitlines()[0].startswith("Semantics: paper — the merge methods as published")
    mixed = render_session([result("ties", "paper"), result("ties", "study-code", 0.4)])
    headers = [line for line in mixed.splitlines() if line.startswith("Semantics:")]
    assert [h.split(" ")[1] for h in headers] == ["paper", "study-code"]
    first, second = mixed.split("Semantics: study-code")
    assert "0.500" in first and "0.400" not in first and "0.400" in second
    with pytest.raises(UsageError, match="the baseline ran --mb-semantics paper and this run study-code"):
        compare([result("ties", "paper")], [result("ties", "study-code")])
    assert CaseResult.from_dict({k: v for k, v in result("ties", "paper").to_dict().items() if k != "semantics"}
                                ).semantics == "paper"  # results saved before the field read as paper


def test_a_study_code_run_skips_methods_without_that_form_and_says_so(bench, tmp_path):
    run = bench.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math",
                                     "--mb-methods", "soup,slerp", "--mb-semantics", "study-code", "-rs",
                                     "--mb-json", str(tmp_path / "r.json"))
    run.assert_outcomes(passed=1, skipped=1)
    run.stdout.fnmatch_lines(["Semantics: study-code — the merge methods as the study's released code computes them*",
                              "*method 'slerp' has no study-code form (it declares none)*"])
    case, = json.loads((tmp_path / "r.json").read_text())["cases"]
    assert case["semantics"] == "study-code" and case["params"] == {"embeddings": "base"}


def test_a_param_contradicting_the_semantics_is_a_usage_error_before_collection(bench):
    run = bench.runpytest_subprocess("--mb-suite", "tiny", "--mb-methods", "ties", "--mb-semantics", "study-code",
                                     "--mb-param", "ties.merge_func=mean")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    run.stderr.fnmatch_lines(["*merge_func='mean' contradicts the study-code semantics*"])


def test_study_code_ties_of_the_engine_equals_the_grid_merge(tiny_llama, tiny_experts):
    """The search's in-memory merge computes the same study-code TIES as the merge stage (majority pass included)."""
    from mergebench.merging.engine import merge_checkpoints
    from mergebench.search.grid_merge import merge_grid

    spec = methods().get("ties")
    params = spec.resolve_params({"density": 0.2, "scaling": 0.3}, "study-code")
    (_, state), = merge_grid(spec, [params], tiny_llama, tiny_experts)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        merge_checkpoints(spec, params, tiny_llama, tiny_experts, Path(folder) / "m")
        written = load_tensors(Path(folder) / "m")
    for name in written:
        assert torch.equal(state[name], written[name]), name


def test_mixed_semantics_with_per_item_values_resample_each_semantics_on_its_own():
    """The same model and method in both semantics: each set of tables gets intervals of its own items."""
    from dataclasses import replace

    from mergebench.results.uncertainty import Bootstrap
    from tests.item_results import item_case

    expert = [1.0] * 10
    paper = item_case("t", "math", [1.0] * 8 + [0.0] * 2, expert, method="ties")
    study = replace(item_case("t", "math", [1.0] * 3 + [0.0] * 7, expert, method="ties"), semantics="study-code")
    text = render_session([paper, study], width=200, boot=Bootstrap([paper, study]))  # as pytest passes one
    first, second = text.split("Semantics: study-code")
    assert first.startswith("Semantics: paper")
    assert "0.800" in first and "0.300" not in first and "0.300" in second and "0.800" not in second
    for part in (first, second):
        assert "95% interval, a percentile bootstrap over items" in " ".join(part.split())
