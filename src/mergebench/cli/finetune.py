"""``mergebench finetune``: build (or find in the cache) a registered model's experts."""

from __future__ import annotations

import argparse

from mergebench.cli.common import console, run_context
from mergebench.errors import UsageError


def cmd_finetune(args: argparse.Namespace) -> int:
    from mergebench import plugin_manager, progress
    from mergebench.pipeline import Pipeline

    registries = plugin_manager.registries()
    model = registries.models.get(args.base)
    pipeline = Pipeline(run_context(args), registries)
    from mergebench.specs import ExpertSpec

    domains = args.domain or list(model.domains)
    if args.recipe and len(domains) != 1:
        raise UsageError("--recipe trains one expert: name its domain with --domain")
    with progress.use_sink(progress.default_sink()):
        for domain in domains:
            if args.recipe:  # train with this recipe even where the model's expert would be fetched from the hub
                recipe = registries.recipes.get(args.recipe)
                ref = pipeline.trained(model, ExpertSpec(domain=domain, recipe=recipe.name), f"{domain} expert of {model.name}")
            elif domain == "mtl":
                ref = pipeline.mtl(model)
            else:
                ref = pipeline.expert(model, domain)
            console().print(f"{domain} {'model' if domain == 'mtl' else 'expert'} of {model.name}: {ref.path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="build (or find in the cache) the experts of a registered model")
    p.add_argument("--base", required=True, metavar="MODEL", help="a registered model name, e.g. smollm2-135m-instruct")
    p.add_argument("--domain", action="append", metavar="DOMAIN",
                   help="default: every domain of the model; 'mtl' builds the multi-task baseline")
    p.add_argument("--recipe", metavar="RECIPE", help="train with this registered recipe (e.g. study-math for a new base)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--model-root", action="append", default=[])
    p.set_defaults(func=cmd_finetune)
