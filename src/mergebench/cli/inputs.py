"""Checks of what a user passed, made before any work starts and before anything is written.

Each turns a bad folder, file or value into a :class:`~mergebench.errors.MergebenchError` that
names the option and the fix, where the code that reads it later (transformers, json, re, torch)
would raise a traceback deep into the work, or run on: ``--limit -1`` once scored all items but
the last, and a data-aware merge once read a pickle that ``--allow-pickle`` had not allowed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

from mergebench.errors import CheckpointError, UsageError

CONVERT = "convert it (load it and save_pretrained with safe_serialization=True)"
ALLOW_PICKLE_FIX = f"mergebench reads safetensors unless told otherwise: {CONVERT}, or pass --allow-pickle if you trust the file"
STATISTICS_PICKLE_FIX = f"the statistics of data-aware methods load safetensors only, also with --allow-pickle: {CONVERT}"
EVAL_PICKLE_FIX = f"evaluation loads safetensors only: {CONVERT}"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tekken.json", "*.tiktoken")


def checkpoint_folder(path: Path | str, flag: str, *, allow_pickle: bool = False, pickle_fix: str = ALLOW_PICKLE_FIX) -> Path:
    """``path`` as a checkpoint folder whose config parses and whose weights can be read (headers, sizes, and a
    cache artifact's manifest); pickle-only weights only with ``allow_pickle``, else refused with ``pickle_fix``."""
    from mergebench.cache.integrity import verify_if_artifact
    from mergebench.checkpoint.reader import INDEX_FILE, check_safetensors

    path = Path(path)
    given = named(flag, path)
    if not path.exists():
        raise UsageError(f"{given} does not exist; give a checkpoint folder (config.json and *.safetensors)")
    if not path.is_dir():
        raise UsageError(f"{given} is a file; give the checkpoint's folder (config.json and *.safetensors)")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{given} has no config.json, so it is not a Hugging Face checkpoint folder; "
                              "give the folder that holds config.json and the weights")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config} is not valid JSON ({exc}); restore the checkpoint's config.json "
                              "(fetch the checkpoint again or rebuild it)") from None
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{config} is not a JSON object; restore the checkpoint's config.json")
    verify_if_artifact(path)
    if (path / INDEX_FILE).is_file() or any(path.glob("*.safetensors")):
        check_safetensors(path)
        return path
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not pickles:
        raise CheckpointError(f"{given} has no model weights (*.safetensors); give a complete checkpoint folder")
    if not allow_pickle:
        raise CheckpointError(f"{given} has only pickle weights ({pickles[0].name}); {pickle_fix}")
    return path


def tokenizer(path: Path, flag: str) -> None:
    """A checkpoint to generate or score text with has its tokenizer (transformers would fail after loading the weights)."""
    if not any(any(path.glob(pattern)) for pattern in TOKENIZER_FILES):
        raise CheckpointError(f"{named(flag, path)} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); copy "
                              "them from the model it was trained or merged from")


def named(flag: str, path: Path | str) -> str:
    """How a message names a path the user gave: ``--base DIR``, ``--expert math=DIR``, or ``what (DIR)``."""
    if flag.endswith("="):
        return f"{flag}{path}"
    return f"{flag} {path}" if flag.startswith("-") else f"{flag} ({path})"


def regexes(patterns: Sequence[str], flag: str) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"{flag} {pattern!r} is not a regular expression ({exc}); escape special characters "
                             r"with a backslash, e.g. 'lm_head\.weight'") from None
    return tuple(patterns)


def at_least(value: int | None, minimum: int, flag: str, meaning: str) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{flag} {value}: give {meaning} (at least {minimum})")


def device(requested: str) -> str:
    """The device for ``--device``, refused with this option's name (no GPU, a typo) before any work."""
    from mergebench.devices import resolve_device

    name = (requested or "auto").strip().lower()
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {requested}: no CUDA GPU is visible here; use --device cpu (or auto)")
    elif name not in ("cpu", "auto"):
        raise UsageError(f"--device {requested!r} is not a device; use cpu, cuda, cuda:N or auto")
    return resolve_device(name)


def writable_folder(path: Path, what: str) -> Path:
    """The nearest existing folder at or above ``path``, after creating and removing a probe in it.

    Found out before the inputs are read (a data-aware merge computes statistics for minutes first);
    ``what`` says who needs to write there.
    """
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what}: {existing} is a file, so nothing can be created under it; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mergebench-probe-", dir=existing))
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {existing} ({exc.strerror or exc}); choose a folder you can "
                         "write to") from None
    return existing
