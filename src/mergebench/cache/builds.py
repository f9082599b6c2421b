"""The cache's record of completed builds: one JSON line per artifact renamed into place.

The artifact folders say what exists, not who made it or how often. When several processes or
machines share one cache (xdist workers, Ray or Slurm nodes on a network filesystem), "was this
expert trained exactly once?" needs a record written by the build itself, not by a log that a
crashed node never flushed. :func:`record_build` appends one line to ``<cache>/builds.jsonl``
after the rename, under a lock of its own (appends from several NFS clients are not atomic), so
the file lists every completed build with its host, pid and duration. A build killed before its
rename writes nothing, so a retried build appears once.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

BUILDS_FILE = "builds.jsonl"


def record_build(root: Path, *, stage: str, digest: str, label: str, seconds: float) -> None:
    """Append one completed build to ``root``'s builds log (best effort: a full disk or a read-only
    log must not turn a finished artifact into a failed build)."""
    line = json.dumps({
        "stage": stage,
        "digest": digest,
        "label": label,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": round(seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, sort_keys=True)
    try:
        (root / "locks").mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / "locks" / "builds.lock")), open(root / BUILDS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError:
        pass


def read_builds(root: Path) -> Iterator[dict[str, Any]]:
    """Every recorded build of the cache at ``root``, oldest first (lines that do not parse are skipped)."""
    path = Path(root) / BUILDS_FILE
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry
