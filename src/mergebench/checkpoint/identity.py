"""The identity of a checkpoint folder mergebench did not build, for the cache keys that depend on it.

One definition for every stage: the pipeline keys hub bases, hub experts and ``--mb-checkpoint``
folders with it, and ``mergebench merge`` keys the statistics of its ``--base`` and ``--expert``
folders with it, so the same folder has the same identity everywhere.

It covers what a loader reads: every weight file (safetensors shards, their index, and
``pytorch_model*.bin`` pickles with their index, which ``--allow-pickle`` lets the merge read),
the config, and the tokenizer, chat template and generation config, which decide how samples
are encoded and answers generated. Editing any of them gives the folder a new identity, so a
result computed from the old files is not reused for the new ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_PATTERNS = ("*.safetensors",)
"""Weight files named by size and modification time (hashing gigabytes per lookup would cost minutes)."""

EXTRA_WEIGHT_PATTERNS = ("pytorch_model*.bin",)
"""Also named by size and time, after the files above, only when present (so folders without them keep their digest)."""

READ_FILES = (
    "model.safetensors.index.json", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
    "chat_template.jinja", "chat_template.json", "generation_config.json",
)
"""Files a loader reads besides the weights (kilobytes to tens of MB), hashed by content when present."""

READ_PATTERNS = ("additional_chat_templates/*.jinja",)


def checkpoint_identity(path: Path) -> str:
    """Hub snapshots are named by their commit, used when present. Otherwise: the config, each weight
    file's name, size and modification time (rewriting a weight file changes its mtime, so an edited
    checkpoint gets a new key without hashing gigabytes of weights), then the other files loaders read.

    A folder of only ``config.json`` and ``*.safetensors`` keeps the digest it had before the other
    files were covered, so existing cache entries of such folders stay valid.
    """
    path = Path(path)
    if path.parent.name == "snapshots" and len(path.name) == 40:
        return f"hub-commit:{path.name}"
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for pattern in WEIGHT_PATTERNS:
        for weight in sorted(path.glob(pattern)):
            digest.update(_stamp(weight))
    for pattern in EXTRA_WEIGHT_PATTERNS:
        for weight in sorted(path.glob(pattern)):
            digest.update(b"\0weights\0" + _stamp(weight))
    read = [path / name for name in READ_FILES] + [f for pattern in READ_PATTERNS for f in sorted(path.glob(pattern))]
    for file in read:
        if file.is_file():
            content = file.read_bytes()
            name = file.relative_to(path).as_posix()
            digest.update(f"\0file\0{name}\0{len(content)}\0".encode() + content)
    return digest.hexdigest()


def _stamp(weight: Path) -> bytes:
    stat = weight.stat()
    return f"{weight.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()
