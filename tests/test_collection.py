"""pytest collection of the benchmark grid: ids, markers, selection options, no heavy imports."""

from __future__ import annotations

import sys
import textwrap

import pytest


def collected_ids(result) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in result.outlines if line.startswith("test_merge.py::test_merge[")]


def test_full_grid_ids_and_keyword_selection(bench):
    result = bench.runpytest("--collect-only", "-q", "--mb-suite", "full", "-k", "task_arithmetic and gemma")
    ids = collected_ids(result)
    assert ids, result.outlines
    assert all("task_arithmetic" in i and "gemma" in i for i in ids)
    assert "gemma-2-2b-it-task_arithmetic-" in " ".join(ids)
    models = {i.split("-task_arithmetic-")[0] for i in ids}
    assert models == {"gemma-2-2b", "gemma-2-2b-it", "gemma-2-9b", "gemma-2-9b-it"}


def test_default_suite_is_the_embedded_mini_suite(bench):
    ids = collected_ids(bench.runpytest("--collect-only", "-q"))
    assert ids and all(i.startswith("smollm2-135m-instruct-") for i in ids)
    assert "smollm2-135m-instruct-soup-gsm8k_bpb_mini" in ids
    assert not any(i.endswith("-gsm8k_mini") for i in ids)  # heavy generative tasks are in mini-gen


def test_domain_and_family_markers_select_cases(bench):
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "-m", "math and coefficient"))
    assert ids and all(i.endswith("-toy_math") for i in ids)


def test_explicit_names_and_their_typos(bench):
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-models", "tiny-llama", "--mb-methods", "soup", "--mb-tasks", "toy_math,toy_coding"))
    assert ids == ["tiny-llama-soup-toy_math", "tiny-llama-soup-toy_coding"]
    result = bench.runpytest("--collect-only", "-q", "--mb-methods", "soupp")
    result.stderr.fnmatch_lines(["*unknown method 'soupp'; did you mean 'soup'?*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result = bench.runpytest("--collect-only", "-q", "--mb-suite", "ful")
    result.stderr.fnmatch_lines(["*unknown suite 'ful'; did you mean 'full'?*"])


def test_param_overrides_are_validated_at_collection(bench):
    result = bench.runpytest("--collect-only", "-q", "--mb-param", "task_arithmetic.scaling=20")
    result.stderr.fnmatch_lines(["*scaling=20.0 is out of range*"])
    result = bench.runpytest("--collect-only", "-q", "--mb-param", "densty=0.2")
    result.stderr.fnmatch_lines(["*no selected method has a hyperparameter 'densty'*"])


def test_collection_of_the_full_grid_imports_no_torch(bench):
    bench.makeconftest(textwrap.dedent("""
        import sys
        def pytest_collection_finish(session):
            heavy = sorted(m for m in ("torch", "transformers", "vllm", "trl", "ray", "submitit") if m in sys.modules)
            print("HEAVY-MODULES:", ",".join(heavy) or "none")
    """))
    result = bench.runpytest_subprocess("--collect-only", "-q", "--mb-suite", "all", "-s")
    result.stdout.fnmatch_lines(["HEAVY-MODULES: none"])
    assert len(collected_ids(result)) > 100
    for executor in ("ray", "slurm"):  # choosing a cluster engine imports it only when the run starts
        result = bench.runpytest_subprocess("--collect-only", "-q", "--mb-suite", "all", "-s", "--mb-executor", executor)
        result.stdout.fnmatch_lines(["HEAVY-MODULES: none"])


@pytest.mark.slow
def test_a_local_run_imports_no_cluster_engine(bench):
    bench.makeconftest(textwrap.dedent("""
        import sys
        def pytest_sessionfinish(session):
            print("CLUSTER-MODULES:", ",".join(sorted(m for m in ("ray", "submitit") if m in sys.modules)) or "none")
    """))
    result = bench.runpytest_subprocess("-s", "--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-methods", "soup",
                                        "--mb-tasks", "toy_math")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*CLUSTER-MODULES: none"])  # after the dot of the passed case


def test_a_separately_installed_plugin_appears_in_plugins_and_collection(bench, tmp_path, monkeypatch):
    """A third-party distribution (dist-info with an entry point) adds a method without touching mergebench."""
    site = tmp_path / "site"
    (site / "mb_extra-1.2.3.dist-info").mkdir(parents=True)
    (site / "mb_extra-1.2.3.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-extra\nVersion: 1.2.3\n")
    (site / "mb_extra-1.2.3.dist-info" / "entry_points.txt").write_text("[mergebench]\nextra = mb_extra\n")
    (site / "mb_extra.py").write_text(textwrap.dedent("""
        from mergebench import hookimpl
        from mergebench.specs import MethodSpec

        @hookimpl
        def mergebench_register_methods(register):
            register(MethodSpec(name="mean_of_two", impl="mergebench_builtins.methods.soup:Soup", family="other"))
    """))
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = bench.runpytest_subprocess("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama")
    assert "tiny-llama-mean_of_two-toy_math" in collected_ids(result)
    listing = bench.run(sys.executable, "-m", "mergebench.cli", "plugins")
    listing.stdout.fnmatch_lines(["*extra*mb-extra*1.2.3*", "*mean_of_two*other*"])


def test_the_default_grid_is_the_studys_nine_methods_and_all_adds_the_extras(bench):
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama",
                                        "--mb-tasks", "toy_math"))
    methods = {i.removeprefix("tiny-llama-").removesuffix("-toy_math") for i in ids}
    assert methods == {"soup", "task_arithmetic", "fisher", "regmean", "ties", "dare", "consensus", "localize_stitch",
                       "dataless_localize_stitch"}
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama",
                                        "--mb-tasks", "toy_math", "--mb-methods", "all"))
    methods_all = {i.removeprefix("tiny-llama-").removesuffix("-toy_math") for i in ids}
    # slerp: 2 experts only; mtl: the multi-task baseline, a row of its own
    assert methods_all - methods == {"della", "breadcrumbs", "model_stock", "tsv", "iso_c", "iso_cts", "mtl"}


def test_the_multi_task_baseline_is_selected_by_name_and_needs_a_model_that_has_one(bench):
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama",
                                        "--mb-tasks", "toy_math", "--mb-methods", "mtl,soup"))
    assert ids == ["tiny-llama-soup-toy_math", "tiny-llama-mtl-toy_math"]
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-models", "smollm2-135m-instruct", "--mb-methods", "mtl"))
    assert ids and all(i.startswith("smollm2-135m-instruct-mtl-") for i in ids)
    result = bench.runpytest("--collect-only", "-q", "--mb-models", "llama-3.2-3b", "--mb-methods", "mtl")
    result.stderr.fnmatch_lines(["*model 'llama-3.2-3b' has no multi-task baseline; models with one: *smollm2-135m-instruct*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_a_models_own_hyperparameter_defaults_apply_to_methods_that_have_them():
    from mergebench import plugin_manager
    from mergebench.selection import select_cases
    from mergebench_builtins.models import EMBEDDED_STATISTICS_SAMPLES

    registries = plugin_manager.registries()
    cases = {c.method: dict(c.params) for c in select_cases(registries, suites=["mini"], tasks=["gsm8k_bpb_mini"])}
    assert cases["fisher"] == {"samples": EMBEDDED_STATISTICS_SAMPLES} == cases["regmean"]
    assert cases["ties"] == {} and cases["soup"] == {}
    overridden = {c.method: dict(c.params) for c in select_cases(registries, suites=["mini"], tasks=["gsm8k_bpb_mini"],
                                                                  params=["fisher.samples=32"])}
    assert overridden["fisher"] == {"samples": 32} and overridden["regmean"] == {"samples": EMBEDDED_STATISTICS_SAMPLES}


def test_the_help_describes_every_built_in_suite_and_the_hint_searches_them_all(bench):
    """The -k hint once skipped mini-gen and leaderboard; the help now describes every built-in suite."""
    from mergebench import plugin_manager
    from mergebench.selection import SUITE_DESCRIPTIONS

    registries = plugin_manager.registries()
    built_in = {suite for registry in (registries.models, registries.tasks) for spec in registry.specs()
                if registry.entry(spec.name).provider.plugin.startswith("builtin-") for suite in spec.suites}
    assert built_in == set(SUITE_DESCRIPTIONS)
    help_text = " ".join(bench.runpytest("--help").stdout.str().split())
    assert all(f"{suite} ({text})" in help_text for suite, text in SUITE_DESCRIPTIONS.items())
    result = bench.runpytest("--collect-only", "-q", "-k", "gsm8k_mini and soup")
    result.stdout.fnmatch_lines(["mergebench: -k 'gsm8k_mini and soup' deselected all * cases of this run; *",
                                 "  --mb-suite mini-gen  1 case, e.g. smollm2-135m-instruct-soup-gsm8k_mini  *"])


def _install_plugin(site, name: str, source: str) -> None:
    """A dist-info with a ``mergebench`` entry point, as ``pip install`` of a third-party plugin leaves it."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mergebench]\n{name} = {name}\n")
    (site / f"{name}.py").write_text(textwrap.dedent(source))


def test_a_plugin_methods_new_family_is_a_registered_marker(bench, tmp_path, monkeypatch):
    _install_plugin(tmp_path / "site", "mb_experimental", """
        from mergebench import hookimpl
        from mergebench.specs import MethodSpec

        @hookimpl
        def mergebench_register_methods(register):
            register(MethodSpec(name="soup_x", impl="mergebench_builtins.methods.soup:Soup", family="experimental"))
    """)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    result = bench.runpytest_subprocess("--collect-only", "-q", "--mb-suite", "tiny", "--mb-models", "tiny-llama",
                                        "--mb-tasks", "toy_math", "-m", "experimental",
                                        "-W", "error::pytest.PytestUnknownMarkWarning")
    assert result.ret == pytest.ExitCode.OK, result.outlines + result.errlines
    assert collected_ids(result) == ["tiny-llama-soup_x-toy_math"]


def test_a_named_model_brings_its_own_suite_when_no_suite_is_given(bench):
    """--mb-models outside the default suite used to select nothing: the mini suite's tasks were kept."""
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-models", "tiny-llama", "--mb-methods", "soup"))
    assert ids and all(i.startswith("tiny-llama-soup-toy_") for i in ids)
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-models", "llama-3.2-3b", "--mb-methods", "ties"))
    assert "llama-3.2-3b-ties-ifeval" in ids and not any(i.endswith("_mini") for i in ids)
    assert not any("truthfulqa" in i for i in ids)  # its first suite, full; the leaderboard preset needs --mb-suite
    ids = collected_ids(bench.runpytest("--collect-only", "-q", "--mb-models", "llama-3.2-3b,smollm2-135m-instruct",
                                        "--mb-methods", "ties"))
    assert "llama-3.2-3b-ties-ifeval" in ids and "smollm2-135m-instruct-ties-gsm8k_bpb_mini" in ids
