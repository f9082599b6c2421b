"""The pytest plugin: what to run, as parametrized tests, and the fixtures that run a case.

Any test that takes the ``mb_case`` fixture is parametrized over the selected (model, method,
task) grid with ids like ``gemma-2-2b-it-ties-gsm8k``, and marked with the task's domain and the
method's family, so ``-k "ties and gemma"`` or ``-m math`` select cases. Collection imports no
torch: specs are plain data and implementations load when a case runs.

This module is the ``pytest11`` entry point; each other feature is a plugin module it loads:
:mod:`~mergebench.pytest_progress` (progress on pytest's terminal, relayed from xdist workers),
:mod:`~mergebench.pytest_results` (results gathered, saved, compared and gated),
:mod:`~mergebench.pytest_xdist` (one GPU per xdist worker), :mod:`~mergebench.pytest_cluster` (stages on Ray
or Slurm) and :mod:`~mergebench.pytest_selection_hint` (where the cases are when ``-k``/``-m`` deselects them all).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mergebench import pytest_judge
from mergebench.errors import MergebenchError

cases_key = pytest.StashKey[list]()
BUILT_IN_FAMILIES = ("coefficient", "sparsification", "other")  # the study's Table 1; other also marks the mtl and checkpoint rows

# The other features are plugin modules of their own, registered wherever this one loads (controller and xdist workers).
pytest_plugins = ["mergebench.pytest_progress", "mergebench.pytest_results", "mergebench.pytest_xdist",
                  "mergebench.pytest_selection_hint", "mergebench.pytest_mergekit", "mergebench.pytest_cluster"]


def pytest_addoption(parser: pytest.Parser) -> None:
    from mergebench.search.strategies import STRATEGIES
    from mergebench.selection import suites_help
    from mergebench.specs import PAPER, SEMANTICS

    group = parser.getgroup("mergebench", "mergebench: benchmark merging methods")
    group.addoption("--mb-suite", action="append", default=None, metavar="NAME", help=suites_help())
    group.addoption("--mb-models", action="append", default=None, metavar="NAMES", help="comma-separated model names")
    group.addoption("--mb-methods", action="append", default=None, metavar="NAMES", help="comma-separated merge methods, or all (default: the study's nine and installed plugins' methods)")
    group.addoption("--mb-tasks", action="append", default=None, metavar="NAMES", help="comma-separated tasks")
    group.addoption("--mb-param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                    help="override a method hyperparameter (repeatable)")
    group.addoption("--mb-checkpoint", default=None, metavar="DIR",
                    help="evaluate this existing merged checkpoint instead of merging (with one --mb-models base)")
    group.addoption("--mb-semantics", default=PAPER, choices=SEMANTICS,
                    help="every method as published (paper, the default) or as the study's released code computes it "
                    "(study-code; methods without such a form are skipped, saying why): docs/fidelity.md")
    group.addoption("--mb-search", default="none", choices=("none", *STRATEGIES),
                    help="tune each method's declared grid on the validation surrogates: the full grid, "
                    "successive halving, or none (declared defaults; the default)")
    group.addoption("--mb-cache-dir", default=None, metavar="DIR",
                    help="artifact cache (default: $MERGEBENCH_CACHE or ~/.cache/mergebench)")
    group.addoption("--mb-device", default="auto", metavar="DEVICE", help="cpu, cuda, cuda:N or auto (default)")
    group.addoption("--mb-limit", type=int, default=None, metavar="N", help="evaluate at most N items per task (smoke runs)")
    group.addoption("--mb-seed", type=int, default=0, help="seed for finetuning, random merge methods and data order")
    group.addoption("--mb-batch-size", type=int, default=16, help="evaluation batch size")
    group.addoption("--mb-backend", default="hf", metavar="NAME",
                    help="evaluation backend: hf (in-process transformers, default) or vllm (CUDA, mergebench[vllm])")
    group.addoption("--mb-model-root", action="append", default=[], metavar="DIR",
                    help="folder with local copies of hub models, as DIR/<org>/<name> (repeatable)")
    group.addoption("--mb-allow-pickle", action="store_true", default=False,
                    help="also load pytorch_model.bin pickles (only for files you trust)")
    group.addoption("--mb-unsandboxed-code", action="store_true", default=False,
                    help="where the kernel sandbox cannot start, run generated code anyway WITHOUT isolation "
                    "(the host's files, network and processes; time and memory limits only): trusted setups only")
    pytest_judge.add_options(group)


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def selection_options(config: pytest.Config) -> dict[str, Any]:
    from mergebench.pytest_mergekit import column_names

    methods = config.getoption("mb_methods")
    return {
        "suites": config.getoption("mb_suite"),  # None: mini, or the named models' own suites
        "models": config.getoption("mb_models"),
        "methods": [*methods, *column_names(config)] if methods and "all" not in methods else methods,  # default grid and all have them
        "tasks": config.getoption("mb_tasks"),
        "params": config.getoption("mb_param"),
        "checkpoint": config.getoption("mb_checkpoint"),
    }


def selection_given(config: pytest.Config) -> bool:
    """Whether any --mb-* option names what to run (else the default suite, and maybe no benchmark at all)."""
    options = selection_options(config)
    return bool(any(options[k] for k in ("models", "methods", "tasks", "params", "checkpoint")) or config.getoption("mb_suite")
                or config.getoption("mb_mergekit_config"))


def pytest_configure(config: pytest.Config) -> None:
    from mergebench.specs import DOMAINS, GENERAL

    for name in (*DOMAINS, GENERAL):
        config.addinivalue_line("markers", f"{name}: mergebench cases whose task is in the {name} domain")
    for family in BUILT_IN_FAMILIES:
        config.addinivalue_line("markers", f"{family}: mergebench cases of a {family} merge method (the study's Table 1)")
    if config.getoption("mb_unsandboxed_code"):  # before xdist starts workers: they inherit the environment
        from mergebench.evaluation.sandbox import allow_unsandboxed_code

        allow_unsandboxed_code()
    from mergebench.evaluation.backends import check_backend

    try:
        check_backend(config.getoption("mb_backend"))
    except MergebenchError as exc:
        raise pytest.UsageError(f"mergebench: {exc}") from None
    if not is_worker(config) and selection_given(config):
        _selected_cases(config)  # a bad name or hyperparameter is a usage error before collection starts


def _selected_cases(config: pytest.Config):
    """The cases the --mb-* options select (computed once per session)."""
    if cases_key not in config.stash:
        from mergebench import plugin_manager
        from mergebench.selection import select_cases

        try:
            registries = plugin_manager.registries()
            config.stash[cases_key] = select_cases(registries, **selection_options(config))
            _check_semantics(config, registries, config.stash[cases_key])
        except MergebenchError as exc:
            raise pytest.UsageError(f"mergebench: {exc}") from None
    return config.stash[cases_key]


def _check_semantics(config: pytest.Config, registries, cases) -> None:
    """A --mb-param that contradicts --mb-semantics is a usage error before anything runs."""
    semantics = config.getoption("mb_semantics")
    for name, params in {(c.method, c.params) for c in cases}:
        method = registries.methods.get(name) if name in registries.methods else None  # mtl, checkpoint: no method
        if method is not None and not method.missing_form(semantics):  # one without that form is skipped instead
            method.resolve_params(dict(params), semantics)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mb_case" not in metafunc.fixturenames:
        return
    from mergebench import plugin_manager

    cases = _selected_cases(metafunc.config)
    registries = plugin_manager.registries()
    _register_plugin_markers(metafunc.config, registries)
    semantics = metafunc.config.getoption("mb_semantics")
    params = []
    for case in cases:
        marks = case_marks(case, registries)
        missing = registries.methods.get(case.method).missing_form(semantics) if case.method in registries.methods else ""
        if missing:  # a method with no form in this semantics is skipped, saying why
            marks.append(pytest.mark.skip(reason=missing))
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize("mb_case", params)


def case_marks(case, registries) -> list[pytest.MarkDecorator]:
    """A case's markers: its task's domain and its method's family (for ``-m``), and its xdist group."""
    family = registries.methods.get(case.method).family if case.method in registries.methods else "other"
    return [getattr(pytest.mark, registries.tasks.get(case.task).domain), getattr(pytest.mark, family),
            pytest.mark.xdist_group(f"{case.model}-{case.method}")]


def _register_plugin_markers(config: pytest.Config, registries) -> None:
    """Markers for the domains and families plugins add, so their cases are no unknown marks.

    Done here, where the parametrization loads the registries anyway: in ``pytest_configure`` it
    would import every installed plugin in every pytest process, benchmark or not.
    """
    registered = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in config.getini("markers")}
    domains = sorted({t.domain for t in registries.tasks.specs()} - registered)
    for name in domains:
        config.addinivalue_line("markers", f"{name}: mergebench cases whose task is in the {name} domain")
    for family in sorted({m.family for m in registries.methods.specs()} - registered - set(domains)):
        config.addinivalue_line("markers", f"{family}: mergebench cases of a {family} merge method")


@pytest.fixture(scope="session")
def mergebench_pipeline(pytestconfig: pytest.Config):
    """The session's :class:`~mergebench.pipeline.Pipeline` (cache, device and registries from the options)."""
    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.devices import resolve_device
    from mergebench.pipeline import Pipeline, RunContext

    try:
        device = resolve_device(pytestconfig.getoption("mb_device"))
    except MergebenchError as exc:
        pytest.exit(f"mergebench: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    context = RunContext(
        cache=ArtifactCache(pytestconfig.getoption("mb_cache_dir")),
        device=device,
        seed=pytestconfig.getoption("mb_seed"),
        model_roots=tuple(Path(p) for p in pytestconfig.getoption("mb_model_root")),
        allow_pickle=pytestconfig.getoption("mb_allow_pickle"),
        eval_limit=pytestconfig.getoption("mb_limit"),
        batch_size=pytestconfig.getoption("mb_batch_size"),
        backend=pytestconfig.getoption("mb_backend"),
        search=pytestconfig.getoption("mb_search"),
        semantics=pytestconfig.getoption("mb_semantics"),
        judge=pytest_judge.settings(pytestconfig),
    )
    return Pipeline(context, plugin_manager.registries())


class CaseRunner:
    """What a benchmark test receives as ``mergebench``: runs a case and records its result."""

    def __init__(self, pipeline, item: pytest.Item) -> None:
        self.pipeline = pipeline
        self.item = item

    def run(self, case):
        from mergebench import progress
        from mergebench.pytest_progress import progress_sink
        from mergebench.pytest_results import record_result

        with progress.use_sink(progress_sink(self.item.config)):
            try:
                result = self.pipeline.run_case(case)
            except MergebenchError as exc:
                pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)
        result.device = {"device": self.pipeline.context.device,
                         "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
        record_result(self.item, result)
        return result


@pytest.fixture
def mergebench(request: pytest.FixtureRequest) -> CaseRunner:
    from mergebench.pytest_cluster import remote_runner

    # under --mb-executor ray|slurm the case runs on the cluster: no local pipeline (nor torch) is needed
    return remote_runner(request.node) or CaseRunner(request.getfixturevalue("mergebench_pipeline"), request.node)
