"""``mergebench plugins``: what is installed, and which plugin provided it."""

from __future__ import annotations

import argparse

from mergebench.cli.common import console


def cmd_plugins(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mergebench import plugin_manager

    registries = plugin_manager.registries()
    out = console()
    plugin_table = Table(title="Installed plugins", title_justify="left")
    for column in ("entry point", "distribution", "version"):
        plugin_table.add_column(column, no_wrap=True)
    for provider in registries.plugins:
        plugin_table.add_row(provider.plugin, provider.distribution, provider.version)
    out.print(plugin_table)

    methods = Table(title="Merge methods", title_justify="left")
    methods.add_column("name", no_wrap=True)
    for column in ("family", "hyperparameters (default; grid)", "data", "provided by"):
        methods.add_column(column)
    for entry in registries.methods.entries():
        spec = entry.spec
        params = "; ".join(
            f"{hp.name}={hp.default!r}" + (f" grid {len(hp.grid)}" if hp.grid else "")
            + (f" [dim]({hp.source})[/]" if args.verbose and hp.source else "") for hp in spec.hyperparams
        ) or "—"
        methods.add_row(spec.name, spec.family, params, _data_needs(spec), str(entry.provider))
    out.print(methods)

    tasks = Table(title="Tasks", title_justify="left")
    tasks.add_column("name", no_wrap=True)
    for column in ("domain", "metric", "suites", "stands in for", "provided by"):
        tasks.add_column(column)
    for entry in registries.tasks.entries():
        spec = entry.spec
        tasks.add_row(spec.name, spec.domain, spec.metric + (" ↑" if spec.higher_is_better else " ↓"),
                      ",".join(sorted(spec.suites)), spec.stand_in_for or "", str(entry.provider))
    out.print(tasks)

    models = Table(title="Models", title_justify="left")
    models.add_column("name", no_wrap=True)
    for column in ("family", "size", "instruct", "source", "experts", "suites", "provided by"):
        models.add_column(column)
    for entry in registries.models.entries():
        spec = entry.spec
        experts = ", ".join(f"{e.domain}:{e.hub_id or e.recipe}" for e in spec.experts) if args.verbose else \
            ", ".join(spec.domains)
        models.add_row(spec.name, spec.family, spec.size, "yes" if spec.instruct else "no",
                       spec.hub_id or spec.source, experts, ",".join(sorted(spec.suites)),
                       str(entry.provider))
    out.print(models)

    recipes = Table(title="Finetuning recipes", title_justify="left")
    recipes.add_column("name", no_wrap=True)
    for column in ("domain", "summary", "provided by"):
        recipes.add_column(column)
    for entry in registries.recipes.entries():
        recipes.add_row(entry.spec.name, entry.spec.domain, entry.spec.summary, str(entry.provider))
    out.print(recipes)
    return 0


def _data_needs(spec) -> str:
    """A method's data needs, derived from its class: a plugin whose class cannot be imported still gets listed."""
    try:
        return ", ".join(d.value for d in spec.data)
    except ImportError as exc:
        return f"? (cannot import {spec.impl}: {exc})"


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list installed methods, tasks, models and recipes with their providers")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show where every expert comes from and where every hyperparameter default comes from")
    p.set_defaults(func=cmd_plugins)
