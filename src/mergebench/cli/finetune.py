"""``mergebench finetune``: build (or find in the cache) a registered model's experts."""

from __future__ import annotations

import argparse

from mergebench.cli import inputs
from mergebench.cli.common import console, run_context
from mergebench.errors import UsageError


def cmd_finetune(args: argparse.Namespace) -> int:
    from mergebench import plugin_manager, progress
    from mergebench.pipeline import Pipeline
    from mergebench.specs import ExpertSpec

    registries = plugin_manager.registries()
    model = registries.models.get(args.base)
    domains = args.domain or list(model.domains)
    if args.recipe and len(domains) != 1:
        raise UsageError("--recipe trains one expert: name its domain with --domain")
    if args.recipe:  # train with this recipe even where the model's expert would be fetched from the hub
        wanted = {domains[0]: ExpertSpec(domain=domains[0], recipe=registries.recipes.get(args.recipe).name)}
    else:
        wanted = {domain: _expert_spec(model, domain) for domain in domains}
    pipeline = Pipeline(run_context(args), registries)
    if model.source == "hub" and any(not spec.hub_id for spec in wanted.values()):
        # a hub base to train on is checked before the cache takes a lock or a work folder for it
        inputs.checkpoint_folder(pipeline.base(model).path, f"the base of {model.name}")
    with progress.use_sink(progress.default_sink()):
        for domain, spec in wanted.items():
            kind = "model" if domain == "mtl" else "expert"
            label = f"multi-task model {model.name}" if domain == "mtl" and not args.recipe else f"expert {model.name}/{domain}"
            ref = pipeline.trained(model, spec, label)
            console().print(f"{domain} {kind} of {model.name}: {ref.path}")
    return 0


def _expert_spec(model, domain: str):
    if domain != "mtl":
        return model.expert(domain)
    if model.mtl is None:
        raise UsageError(f"model {model.name!r} has no multi-task baseline (ModelSpec.mtl); drop --domain mtl")
    return model.mtl


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
