"""``pytest benchmarks --mb-mergekit-config NAME=CONFIG.yml``: a mergekit config as a method column, on experts by domain."""

from __future__ import annotations

import json

COLUMN = """merge_method: ties
base_model: base
models:
  - model: base
  - model: math
    parameters: {weight: 1.0, density: 0.5}
  - model: coding
    parameters: {weight: 0.5, density: 0.5}
parameters: {lambda: 0.8}
"""


def test_a_config_adds_a_column_that_merges_the_named_experts(bench, tmp_path):
    config = tmp_path / "mine.yml"
    config.write_text(COLUMN)
    out = tmp_path / "results.json"
    result = bench.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup",
                             "--mb-tasks", "toy_math,toy_coding", "--mb-mergekit-config", f"mine={config}",
                             "--mb-json", str(out), "-q")
    result.assert_outcomes(passed=4)  # soup and mine, on two tasks
    cases = {c["case_id"]: c for c in json.loads(out.read_text())["cases"]}
    mine = cases["tiny-llama-mine-toy_math"]
    assert mine["method"] == "mine"
    assert mine["params"]["weights"] == "math=1.0,coding=0.5" and mine["params"]["scaling"] == 0.8
    merged = next(p for p in (tmp_path / "cache" / "merged").iterdir() if "mine" in (p / "README.md").read_text())
    exported = (merged / "mergekit_config.yml").read_text()
    assert "merge_method: ties" in exported and exported.count("- model:") == 3  # the base and the two named experts
    assert "filter" not in exported  # every tensor merged, as mergekit does


def test_a_column_refuses_paths_and_wrong_bases_at_collection(bench, tmp_path):
    paths = tmp_path / "paths.yml"
    paths.write_text(COLUMN.replace("model: math", "model: /some/folder/math"))
    result = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-mergekit-config", f"mine={paths}")
    result.stderr.fnmatch_lines(["*models: /some/folder/math: in pytest a config's models name the selected model's "
                                 "experts by domain*run mergebench merge --mergekit-config*"])
    base = tmp_path / "base.yml"
    base.write_text(COLUMN.replace("base_model: base", "base_model: math").replace("  - model: base\n", ""))
    result = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-mergekit-config", f"mine={base}")
    result.stderr.fnmatch_lines(["*base_model: math: in pytest it is the selected model's base, written 'base'*"])
    typed = tmp_path / "typed.yml"
    typed.write_text(COLUMN + "dtype: bfloat16\n")
    result = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-mergekit-config", f"mine={typed}")
    result.stderr.fnmatch_lines(["*dtype: in pytest the merge is written in the model's own dtype*"])
    result = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-mergekit-config", f"ties={base}")
    result.stderr.fnmatch_lines(["*--mb-mergekit-config ties: 'ties' is already a method; name the column otherwise*"])
    result = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-mergekit-config", str(base))
    result.stderr.fnmatch_lines(["*must look like NAME=CONFIG.yml*"])


def test_the_column_joins_the_default_grid_and_an_explicit_method_list(bench, tmp_path):
    config = tmp_path / "mine.yml"
    config.write_text(COLUMN)
    ids = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama",
                          "--mb-tasks", "toy_math", "--mb-mergekit-config", f"mine={config}").stdout.str()
    assert "tiny-llama-mine-toy_math" in ids and "tiny-llama-ties-toy_math" in ids
    ids = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup",
                          "--mb-tasks", "toy_math", "--mb-mergekit-config", f"mine={config}").stdout.str()
    assert "tiny-llama-mine-toy_math" in ids and "tiny-llama-ties-toy_math" not in ids
    ids = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "all",
                          "--mb-tasks", "toy_math", "--mb-mergekit-config", f"mine={config}").stdout.str()
    assert "tiny-llama-mine-toy_math" in ids and "tiny-llama-della-toy_math" in ids
    assert "-linear-" not in ids and "mergekit_gta" not in ids  # at their defaults they repeat soup and TA: named only
    ids = bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama",
                          "--mb-tasks", "toy_math").stdout.str()
    assert "mine" not in ids  # the column lives as long as its session
