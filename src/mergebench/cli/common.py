"""What the commands share: ``KEY=VALUE`` options, the console, a run context from the options, input checks."""

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
    from mergebench.devices import resolve_device
    from mergebench.pipeline import RunContext

    return RunContext(
        cache=ArtifactCache(getattr(args, "cache_dir", None)),
        device=resolve_device(getattr(args, "device", "auto")),
        seed=getattr(args, "seed", 0),
        eval_limit=getattr(args, "limit", None),
        batch_size=getattr(args, "batch_size", 16),
        model_roots=tuple(Path(p) for p in getattr(args, "model_root", []) or []),
        backend=getattr(args, "backend", "hf"),
    )


def verify_cached_inputs(paths: Sequence[Path]) -> None:
    """Check checkpoint folders given on the command line before anything loads them: a cache artifact
    against its manifest, every folder's safetensors headers and sizes (a truncated shard is one line
    naming the file, also on paths that load with transformers, such as data-aware statistics)."""
    from mergebench.cache.integrity import verify_if_artifact
    from mergebench.checkpoint.reader import check_safetensors

    for path in paths:
        verify_if_artifact(path)
        if path.is_dir():
            check_safetensors(path)
