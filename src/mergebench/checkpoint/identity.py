"""The identity of a checkpoint folder mergebench did not build, for the cache keys that depend on it.

One definition for every stage: the pipeline keys hub bases, hub experts and ``--mb-checkpoint``
folders with it, and ``mergebench merge`` keys the statistics of its ``--base`` and ``--expert``
folders with it, so the same folder has the same identity everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def checkpoint_identity(path: Path) -> str:
    """Hub snapshots are named by their commit, used when present. Otherwise: the config, and each
    weight file's name, size and modification time; rewriting a weight file changes its mtime, so an
    edited checkpoint gets a new key without hashing gigabytes of weights."""
    path = Path(path)
    if path.parent.name == "snapshots" and len(path.name) == 40:
        return f"hub-commit:{path.name}"
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weight in sorted(path.glob("*.safetensors")):
        stat = weight.stat()
        digest.update(f"{weight.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
