"""``mergebench merge --mergekit-config CONFIG.yml``: a mergekit config's merge, run on our engine.

Everything is checked before anything is read or written: the config's parts
(:mod:`mergebench.merging.mergekit_config` refuses those with no counterpart, by name), the
options it replaces, the model folders and the output dtype.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mergebench.checkpoint.reader import DTYPE_NAMES
from mergebench.errors import UsageError
from mergebench.merging.mergekit_config import MergekitPlan, Refusal

REPLACED = (("method", "--method"), ("base", "--base"), ("expert", "--expert"), ("param", "--param"),
            ("exclude", "--exclude"), ("no_exclude", "--no-exclude"), ("samples", "--samples"))
"""Options a mergekit config replaces: given together, one of the two would be ignored."""


def from_mergekit_config(args: argparse.Namespace) -> tuple[Any, dict, Path, dict[str, Path], tuple[str, ...]]:
    """(method spec, hyperparameters, base folder, expert folders, exclusions) of the config in ``args``."""
    from mergebench import plugin_manager
    from mergebench.checkpoint import CheckpointReader
    from mergebench.cli.common import console
    from mergebench.merging.mergekit_config import load_config, plan_config

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


# -- references as checkpoint folders (the command line) ---------------------------------------


def checkpoint_dirs(plan: MergekitPlan, source: str = "CONFIG") -> tuple[Path, dict[str, Path]]:
    """The base's and the experts' folders; a reference is a local folder, relative to the working directory as in mergekit."""
    refuse = Refusal(source)

    def folder(reference: str, role: str) -> Path:
        path = Path(reference).expanduser()
        if not path.is_dir():
            raise refuse(f"{role}: {reference}", "is not a local checkpoint folder; mergebench reads no hub models: "
                                                 "download it and give its folder (relative paths are from the working directory)")
        return path

    experts = {label: folder(reference, "models") for label, reference in plan.experts.items()}
    base = folder(plan.base, "base_model") if plan.base is not None else next(iter(experts.values()))
    return base, experts


def check_output_dtype(plan: MergekitPlan, stored: str, source: str = "CONFIG") -> None:
    """mergekit writes ``out_dtype`` (else ``dtype``); mergebench computes in float32 and writes the base's dtype: refuse a difference."""
    wanted = plan.out_dtype or plan.dtype
    have = DTYPE_NAMES.get(stored, stored)
    if wanted is not None and wanted != have:
        key = "out_dtype" if plan.out_dtype else "dtype"
        raise Refusal(source)(f"{key}: {wanted}", f"mergekit would write {wanted}; mergebench writes the base checkpoint's "
                                                   f"dtype, {have}: set out_dtype: {have} (or drop {key}) to run it here")
