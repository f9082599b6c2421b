"""``--mb-mergekit-config NAME=CONFIG.yml``: a mergekit config as one more method column of the benchmark.

In pytest a config is applied to each selected model's own experts, **by domain**: its
``models`` are domain names (``math``, ``coding``, ...) and its ``base_model`` is ``base``, the
model's base (for ``slerp``, a domain: the first endpoint; ``linear`` takes none). The column
merges only the experts the config names, every tensor as mergekit does, and is scored like
every method against the model's base and experts. Folder paths are refused: a column must
mean the same thing on every selected model, and paths are what ``mergebench merge
--mergekit-config`` takes.

The column is a :class:`~mergebench.specs.MethodSpec` named NAME, registered in every pytest
process (xdist workers too) before cases are selected, whose hyperparameters' defaults are the
config's values; its merges are cached like any method's (``--mb-param NAME.scaling=...``
overrides one, as for any method).
"""

from __future__ import annotations

import pytest

from mergebench.errors import MergebenchError, UsageError

BASE = "base"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("mergebench").addoption(
        "--mb-mergekit-config", action="append", default=[], metavar="NAME=CONFIG.yml",
        help="add a method column NAME that runs a mergekit config on each selected model's experts, named by domain "
             "(models: math, coding, ...; base_model: base); repeatable")


def column_names(config: pytest.Config) -> list[str]:
    return [item.partition("=")[0] for item in config.getoption("mb_mergekit_config") or []]


@pytest.hookimpl(tryfirst=True)  # before the main plugin selects cases
def pytest_configure(config: pytest.Config) -> None:
    items = config.getoption("mb_mergekit_config") or []
    if not items:
        return
    from mergebench import plugin_manager
    from mergebench.registry import Provider

    registries = plugin_manager.registries()
    known_domains = {d for m in registries.models.specs() for d in m.domains}
    try:
        for item in items:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise UsageError(f"--mb-mergekit-config {item!r} must look like NAME=CONFIG.yml")
            if not name.replace("_", "").replace("-", "").isalnum():
                raise UsageError(f"--mb-mergekit-config {name!r}: a column name takes letters, digits, - and _ only")
            if name in registries.methods:
                raise UsageError(f"--mb-mergekit-config {name}: {name!r} is already a method; name the column otherwise")
            registries.methods.add(column_spec(name, path, known_domains, registries),
                                   Provider(plugin="--mb-mergekit-config"))
    except MergebenchError as exc:
        raise pytest.UsageError(f"mergebench: {exc}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    """Forget the columns with the session (pytester runs several sessions in one process)."""
    if config.getoption("mb_mergekit_config", None):
        from mergebench import plugin_manager

        plugin_manager.reset()


def column_spec(name: str, path: str, known_domains: set[str], registries):
    """The MethodSpec of the column ``name`` running the config at ``path`` on experts by domain."""
    from mergebench.merging.mergekit_config import load_config, plan_config
    from mergebench.specs import HyperParam, MethodSpec

    source = f"{path} (--mb-mergekit-config {name})"
    plan = plan_config(load_config(path), source=source)
    for label, reference in plan.experts.items():
        if reference not in known_domains or label != reference:
            raise UsageError(f"mergekit config {source}: models: {reference}: in pytest a config's models name the "
                             f"selected model's experts by domain ({', '.join(sorted(known_domains))}); to merge "
                             "checkpoint folders, run mergebench merge --mergekit-config")
    if plan.merge_method == "linear":
        if plan.base is not None:
            raise UsageError(f"mergekit config {source}: base_model: linear would average the base too; in pytest the "
                             "column merges experts only: drop base_model")
    elif plan.merge_method != "slerp" and plan.base != BASE:
        raise UsageError(f"mergekit config {source}: base_model: {plan.base}: in pytest it is the selected model's "
                         f"base, written {BASE!r}")
    if plan.dtype or plan.out_dtype:
        raise UsageError(f"mergekit config {source}: dtype: in pytest the merge is written in the model's own dtype; "
                         "drop dtype and out_dtype")
    method = registries.methods.get(plan.method)
    return MethodSpec(
        name=name, impl=method.impl, version=method.version, family=method.family,
        hyperparams=tuple(HyperParam(key, value, doc=f"from {path}") for key, value in method.resolve_params(plan.params).items()),
        domains=tuple(plan.experts.values()), exclude=plan.exclude,
        summary=f"mergekit {plan.merge_method} config {path}, as {method.name}", reference_url=method.reference_url,
    )
