"""Which benchmark cases a run covers: suites, explicit names, hyperparameter overrides.

Kept free of heavy imports: it runs at pytest collection time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from mergebench.case import CHECKPOINT_METHOD, MTL_METHOD, Case
from mergebench.errors import UsageError
from mergebench.plugin_manager import Registries
from mergebench.registry import suggest

ALL = "all"

SUITE_DESCRIPTIONS: dict[str, str] = {
    "mini": "embedded SmolLM2 model, default",
    "mini-gen": "the embedded model's heavier generative metrics",
    "mini-gemma": "the mini tasks on Gemma-3-270m",
    "full": "the study's 8 models and benchmarks, GPU + hub",
    "leaderboard": "Open LLM Leaderboard preset on the study's models",
    "tiny": "random tiny models, for tests",
}
"""The built-in suites, lightest first: what ``--mb-suite`` help lists without loading any plugin."""


def split_names(values: Iterable[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]`` (options may be repeated or comma-separated)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def known_suites(registries: Registries) -> set[str]:
    suites: set[str] = set()
    for spec in [*registries.models.specs(), *registries.tasks.specs()]:
        suites |= set(spec.suites)
    return suites


def ordered_suites(registries: Registries) -> list[str]:
    """The known suites, built-ins in :data:`SUITE_DESCRIPTIONS` order, then plugins' by name."""
    known = known_suites(registries)
    return [s for s in SUITE_DESCRIPTIONS if s in known] + sorted(known - SUITE_DESCRIPTIONS.keys())


def suites_help() -> str:
    """``--mb-suite`` help: static, since pytest builds it in every process before any selection is made."""
    described = ", ".join(f"{name} ({text})" for name, text in SUITE_DESCRIPTIONS.items())
    return f"suite(s) to run: {described}, {ALL}, or a suite an installed plugin adds"


def parse_params(items: Iterable[str], registries: Registries, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.KEY=VALUE`` or ``KEY=VALUE`` (for every selected method that has KEY) → per-method overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        if not sep or not target:
            raise UsageError(f"--mb-param {item!r} must look like METHOD.KEY=VALUE or KEY=VALUE")
        method, dot, key = target.rpartition(".")
        names = [method] if dot else methods
        if dot:
            registries.methods.get(method)  # unknown method: error with suggestions
        applied = False
        for name in names:
            spec = registries.methods.get(name)
            if any(hp.name == key for hp in spec.hyperparams):
                overrides.setdefault(name, {})[key] = spec.param(key).validate(value)
                applied = True
            elif dot:
                spec.param(key)  # raises with the method's parameter list
        if not applied:
            known = sorted({hp.name for n in names for hp in registries.methods.get(n).hyperparams})
            raise UsageError(f"no selected method has a hyperparameter {key!r}{suggest(key, known)}")
    return overrides


def _fits(method, n_experts: int) -> bool:
    return n_experts >= method.min_experts and (method.max_experts is None or n_experts <= method.max_experts)


def default_suites(registries: Registries, model_names: list[str]) -> list[str]:
    """The suites a run covers when ``--mb-suite`` is not given: ``mini``, or each named model's own.

    A model named with ``--mb-models`` brings its first suite (in :func:`ordered_suites` order: the
    study's models ``full``, the tiny test models ``tiny``), so ``--mb-models llama-3.2-3b`` runs the
    study's benchmarks on it instead of selecting nothing from the embedded suite.
    """
    if not model_names:
        return ["mini"]
    order = ordered_suites(registries)
    found = []
    for spec in registries.models.select(model_names):
        primary = next((s for s in order if s in spec.suites), None)
        if primary is not None and primary not in found:
            found.append(primary)
    return found or ["mini"]


def select_cases(
    registries: Registries,
    *,
    suites: Iterable[str] | str | None = None,
    models: Iterable[str] | str | None = None,
    methods: Iterable[str] | str | None = None,
    tasks: Iterable[str] | str | None = None,
    params: Iterable[str] = (),
    checkpoint: str | None = None,
) -> list[Case]:
    available = known_suites(registries)
    model_names = split_names(models)
    suite_names = split_names(suites) or default_suites(registries, model_names)
    if ALL in suite_names:
        suite_names = sorted(available)
    for suite in suite_names:
        if suite not in available:
            raise UsageError(f"unknown suite {suite!r}{suggest(suite, available)} Known suites: {', '.join(sorted(available))}, all")
    chosen = set(suite_names)

    model_specs = registries.models.select(model_names) if model_names else [
        m for m in registries.models.specs() if m.suites & chosen
    ]
    task_names = split_names(tasks)
    task_specs = registries.tasks.select(task_names) if task_names else [
        t for t in registries.tasks.specs() if t.suites & chosen and t.role == "test"
    ]
    method_names = split_names(methods)
    if checkpoint:
        return _checkpoint_cases(checkpoint, model_specs, task_specs, bool(task_names), method_names, list(params))
    with_mtl = method_names == [ALL] or MTL_METHOD in method_names
    only_mtl = method_names == [MTL_METHOD]
    method_names = [n for n in method_names if n != MTL_METHOD]
    if only_mtl:
        method_specs = []
    elif method_names == [ALL]:
        method_specs = [m for m in registries.methods.specs() if m.in_all]
    elif method_names:
        method_specs = registries.methods.select(method_names)
    else:  # the default grid: the study's methods and any plugin's, not the opt-in extras
        method_specs = [m for m in registries.methods.specs() if not m.opt_in]
    overrides = parse_params(params, registries, [m.name for m in method_specs])

    cases = []
    for model in model_specs:
        suite = next(iter(sorted(model.suites & chosen)), next(iter(sorted(model.suites)), ""))
        # a suite's tasks go with that suite's models unless named explicitly
        model_tasks = [t for t in task_specs if task_names or t.suites & model.suites]
        for method in method_specs:
            if method_names in ([], [ALL]) and not _fits(method, len(model.experts)):
                continue  # e.g. SLERP (two experts) on a five-expert model; named explicitly, it fails with the reason
            own = {k: v for k, v in model.param_defaults if any(hp.name == k for hp in method.hyperparams)}
            chosen_params = tuple(sorted({**own, **overrides.get(method.name, {})}.items()))
            cases += [Case(model.name, method.name, task.name, chosen_params, suite) for task in model_tasks]
        if with_mtl:
            if model.mtl is None and method_names != [ALL]:
                raise UsageError(f"--mb-methods mtl: model {model.name!r} has no multi-task baseline; "
                                 "models with one: " + (", ".join(m.name for m in registries.models.specs() if m.mtl) or "none"))
            if model.mtl is not None:
                cases += [Case(model.name, MTL_METHOD, task.name, (), suite) for task in model_tasks]
    return cases


@dataclass(frozen=True)
class Widening:
    """Options that, added to a run, would select ``cases``: the cases a ``-k``/``-m`` filter keeps there."""

    option: str
    suite: str  # the suite the option adds, "" for the run's own suites
    cases: list[Case]


def widenings(registries: Registries, options: dict[str, Any], keep: Callable[[Case], bool]) -> list[Widening]:
    """Where the cases ``keep`` accepts are, when the run's own selection has none.

    First each suite the run does not select (with its other ``--mb-*`` options), lightest first;
    if none has a match and no method was named, the opt-in methods (``--mb-methods all``) in the
    run's suites, then in the others. ``options`` are :func:`select_cases`' keyword arguments.
    """
    if options.get("checkpoint"):
        return []
    current = set(split_names(options.get("suites")) or default_suites(registries, split_names(options.get("models"))))
    if ALL in current:
        current = known_suites(registries)
    others = [s for s in ordered_suites(registries) if s not in current]
    found = [Widening(f"--mb-suite {s}", s, cases) for s in others
             if (cases := _kept(registries, {**options, "suites": [s]}, keep))]
    if found or split_names(options.get("methods")):
        return found
    every_method = {**options, "methods": [ALL]}
    if cases := _kept(registries, every_method, keep):
        found.append(Widening("--mb-methods all", "", cases))
    return found + [Widening(f"--mb-suite {s} --mb-methods all", s, cases) for s in others
                    if (cases := _kept(registries, {**every_method, "suites": [s]}, keep))]


def _kept(registries: Registries, options: dict[str, Any], keep: Callable[[Case], bool]) -> list[Case]:
    try:
        return [case for case in select_cases(registries, **options) if keep(case)]
    except UsageError:  # e.g. --mb-methods mtl with a suite whose models have no multi-task baseline
        return []


def _checkpoint_cases(checkpoint, model_specs, task_specs, explicit_tasks, method_names, params) -> list[Case]:
    """Cases that evaluate one existing checkpoint as the merged model of one base."""
    if method_names or params:
        raise UsageError("--mb-checkpoint evaluates an existing merged model: it cannot be combined with "
                         "--mb-methods or --mb-param")
    if len(model_specs) != 1:
        raise UsageError(
            f"--mb-checkpoint needs exactly one base model to normalize against, got {len(model_specs)} "
            f"({', '.join(m.name for m in model_specs) or 'none'}); name it with --mb-models"
        )
    (model,) = model_specs
    suite = next(iter(sorted(model.suites)), "")
    return [Case(model.name, CHECKPOINT_METHOD, task.name, (), suite, checkpoint=str(checkpoint))
            for task in task_specs if explicit_tasks or task.suites & model.suites]
