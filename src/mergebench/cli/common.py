"""What the commands share: ``KEY=VALUE`` options, the console, a run context from the options (input checks: inputs.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mergebench.errors import UsageError


def key_values(items: Sequence[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} {item!r} must look like KEY=VALUE")
        if key in pairs:
            raise UsageError(f"{flag} {key} is given twice")
        pairs[key] = value
    return pairs


def console():
    from rich.console import Console

    return Console()


def run_context(args: argparse.Namespace):
    from mergebench.cache import ArtifactCache
    from mergebench.cli.inputs import device
    from mergebench.pipeline import RunContext

    return RunContext(
        cache=ArtifactCache(getattr(args, "cache_dir", None)),
        device=device(getattr(args, "device", "auto")),
        seed=getattr(args, "seed", 0),
        eval_limit=getattr(args, "limit", None),
        batch_size=getattr(args, "batch_size", 16),
        model_roots=tuple(Path(p) for p in getattr(args, "model_root", []) or []),
        backend=getattr(args, "backend", "hf"),
    )

