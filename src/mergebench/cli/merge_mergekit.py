"""``mergebench merge --mergekit-config CONFIG.yml``: a mergekit config's merge, run on our engine.

Everything is checked before anything is read or written: the config's parts
(:mod:`mergebench.merging.mergekit_config` refuses those with no counterpart, by name), the
options it replaces, the model folders and the output dtype.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mergebench.errors import UsageError

REPLACED = (("method", "--method"), ("base", "--base"), ("expert", "--expert"), ("param", "--param"),
            ("exclude", "--exclude"), ("no_exclude", "--no-exclude"), ("samples", "--samples"))
"""Options a mergekit config replaces: given together, one of the two would be ignored."""


def from_mergekit_config(args: argparse.Namespace) -> tuple[Any, dict, Path, dict[str, Path], tuple[str, ...]]:
    """(method spec, hyperparameters, base folder, expert folders, exclusions) of the config in ``args``."""
    from mergebench import plugin_manager
    from mergebench.checkpoint import CheckpointReader
    from mergebench.cli.common import console
    from mergebench.merging.mergekit_config import check_output_dtype, checkpoint_dirs, load_config, plan_config

    given = [flag for attr, flag in REPLACED if getattr(args, attr, None)]
    if given:
        raise UsageError(f"--mergekit-config says the method, models and parameters; drop {', '.join(given)}")
    source = args.mergekit_config
    plan = plan_config(load_config(source), source=source)
    base, experts = checkpoint_dirs(plan, source)
    reader = CheckpointReader(base, allow_pickle=args.allow_pickle)
    if reader.names():
        check_output_dtype(plan, reader.dtype_name(reader.names()[0]), source)
    spec = plugin_manager.registries().methods.get(plan.method)
    params = spec.resolve_params(plan.params)
    for note in plan.notes:
        console().print(f"note: {note}")
    console().print(f"mergekit {plan.merge_method} runs as [bold]{spec.name}[/] {params}"
                    + (f", excluding {', '.join(plan.exclude)}" if plan.exclude else ", every tensor merged"))
    return spec, params, base, experts, plan.exclude
