"""``mergebench plugins [NAME]``: what is installed and which plugin provided it; one thing in full.

The listing is Rich tables on a terminal wide enough to show them uncut, else one block per method,
task, model and recipe (:mod:`~mergebench.cli.plugin_text`), which is what a pipe, ``less`` or an
80-column terminal get. Plugins that fail to load are named on stderr; the rest are still listed.
"""

from __future__ import annotations

import argparse
import os
import sys

from mergebench.cli.common import console


def cmd_plugins(args: argparse.Namespace) -> int:
    from mergebench.cli.plugin_detail import describe
    from mergebench.cli.plugin_text import data_needs, listing
    from mergebench.errors import UnknownNameError
    from mergebench.plugin_survey import survey

    found = survey()
    registries = found.registries
    try:
        if args.name:
            print("\n".join(describe(registries, args.name)))
        else:
            out = console()
            tables = _tables(registries, args.verbose, data_needs)
            unbounded = out.options.update_width(100_000)  # a measurement is capped at the width it is given
            wide = out.is_terminal and all(out.measure(table, options=unbounded).maximum <= out.width for table in tables)
            if args.format == "table" or (args.format == "auto" and wide):
                for table in tables:
                    out.print(table)
            else:
                print("\n".join(listing(registries, args.verbose)))
    except BrokenPipeError:  # `mergebench plugins | head` or quitting `less` early: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UnknownNameError as exc:
        if found.problems:
            raise UnknownNameError(f"{exc}; it may come from a plugin that did not load: {' '.join(found.problems)}") from None
        raise
    for problem in found.problems:
        print(f"mergebench: warning: {problem}", file=sys.stderr)
    return 0


def _tables(registries, verbose: bool, data_needs) -> list:
    from rich.table import Table

    plugin_table = Table(title="Installed plugins", title_justify="left")
    for column in ("entry point", "distribution", "version"):
        plugin_table.add_column(column, no_wrap=True)
    for provider in registries.plugins:
        plugin_table.add_row(provider.plugin, provider.distribution, provider.version)

    methods = Table(title="Merge methods", title_justify="left")
    methods.add_column("name", no_wrap=True)
    for column in ("family", "hyperparameters (default; grid)", "data", "provided by"):
        methods.add_column(column)
    for entry in registries.methods.entries():
        spec = entry.spec
        params = "; ".join(
            f"{hp.name}={hp.default!r}" + (f" grid {len(hp.grid)}" if hp.grid else "")
            + (f" ({hp.source})" if verbose and getattr(hp, "source", "") else "") for hp in spec.hyperparams
        ) or "—"
        needs, error = data_needs(spec)
        methods.add_row(spec.name, spec.family, params, ", ".join(needs) or error, str(entry.provider))

    tasks = Table(title="Tasks", title_justify="left")
    tasks.add_column("name", no_wrap=True)
    for column in ("domain", "metric", "suites", "stands in for", "provided by"):
        tasks.add_column(column)
    for entry in registries.tasks.entries():
        spec = entry.spec
        tasks.add_row(spec.name, spec.domain, spec.metric + (" ↑" if spec.higher_is_better else " ↓"),
                      ",".join(sorted(spec.suites)), spec.stand_in_for or "", str(entry.provider))

    models = Table(title="Models", title_justify="left")
    models.add_column("name", no_wrap=True)
    for column in ("family", "size", "instruct", "source", "experts", "suites", "provided by"):
        models.add_column(column)
    for entry in registries.models.entries():
        spec = entry.spec
        experts = ", ".join(f"{e.domain}:{e.hub_id or e.recipe}" for e in spec.experts) if verbose else \
            ", ".join(spec.domains)
        models.add_row(spec.name, spec.family, spec.size, "yes" if spec.instruct else "no",
                       spec.hub_id or spec.source, experts, ",".join(sorted(spec.suites)),
                       str(entry.provider))

    recipes = Table(title="Finetuning recipes", title_justify="left")
    recipes.add_column("name", no_wrap=True)
    for column in ("domain", "summary", "provided by"):
        recipes.add_column(column)
    for entry in registries.recipes.entries():
        recipes.add_row(entry.spec.name, entry.spec.domain, entry.spec.summary, str(entry.provider))
    return [plugin_table, methods, tasks, models, recipes]


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list installed methods, tasks, models and recipes with their providers, "
                                       "or show one (its hyperparameters' docs, grids and ranges) in full")
    p.add_argument("name", nargs="?", metavar="NAME", help="a method, task, model or recipe to show in full")
    p.add_argument("-v", "--verbose", action="store_true", help="show where every expert comes from and where every hyperparameter default comes from")
    p.add_argument("--format", choices=("auto", "table", "list"), default="auto",
                   help="tables, or one block per item (auto, the default: tables only on a terminal wide enough "
                        "to show them uncut)")
    p.set_defaults(func=cmd_plugins)
