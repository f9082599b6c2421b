"""Training sets named by Hugging Face Hub id: a local copy first, then the ``datasets`` library.

The study's recipes train on hub datasets (Tulu-3 persona IF, DART-Math, Aya, Magicoder,
WildGuardMix...). A machine without the hub can still run them from local files laid out as
``<root>/<org>/<name>/<config>/<split>.jsonl`` (``config`` is ``default`` for datasets without
one) under a data root (``MERGEBENCH_DATA_ROOT``, several separated by ``os.pathsep``). Anything
else fails before training starts with an error that says both ways out.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergebench.errors import HubUnavailableError


def data_roots() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get("MERGEBENCH_DATA_ROOT", "").split(os.pathsep) if p]


def local_file(hub_id: str, config: str | None, split: str, roots: list[Path]) -> Path | None:
    for root in roots:
        candidate = root / hub_id / (config or "default") / f"{split}.jsonl"
        if candidate.is_file():
            return candidate
    return None


def load_rows(hub_id: str, config: str | None, split: str, *, revision: str | None = None,
              roots: list[Path] | None = None, **load_kwargs):
    """The ``split`` of ``hub_id`` (``config``) as a ``datasets.Dataset``."""
    import datasets

    roots = data_roots() if roots is None else roots
    found = local_file(hub_id, config, split, roots)
    if found is not None:
        return datasets.load_dataset("json", data_files=str(found), split="train")
    try:
        return datasets.load_dataset(hub_id, config, split=split, revision=revision, **load_kwargs)
    except Exception as exc:
        where = ", ".join(str(r) for r in roots) or "(MERGEBENCH_DATA_ROOT not set)"
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise HubUnavailableError(
            f"cannot load the training set {hub_id}" + (f" ({config})" if config else "") + f", split {split!r}, "
            f"from the Hugging Face Hub ({why}). On a machine without hub access, put the rows in "
            f"DIR/{hub_id}/{config or 'default'}/{split}.jsonl and set MERGEBENCH_DATA_ROOT=DIR (looked in: {where}); "
            "gated sets (WildGuardMix, WildJailbreak) also need `huggingface-cli login`. "
            "To finetune without the hub, use the mini recipes (--mb-suite mini)."
        ) from None
