"""What ``mergebench cache gc`` may delete, decided before anything is deleted.

The cache only grows: a killed build's tmp folder, an expert's resumable work folder, and every
artifact of every hyperparameter ever tried stay forever (a 9B merge is 18 GB). :func:`plan`
lists what can go and why; :func:`execute` removes it. Rules that keep it safe:

* only paths found by listing the cache root: ``tmp/`` build folders of dead processes (see
  :mod:`mergebench.cache.leftovers`), artifact folders whose ``meta.json`` names them (stage and digest
  match the folder, so a mistyped ``--cache-dir`` pointing at a home folder finds nothing),
  half-built artifact folders (no ``meta.json``) and ``work/`` folders, never a symlink, and
  ``rmtree`` does not follow the symlinks inside what it removes;
* artifacts and work folders only when asked (``--older-than DAYS``: not used for that long,
  judged by the folder mtime a cache hit stamps; ``--stage``: of these stages);
* an artifact is removed under its build lock, taken without waiting (held: kept), after
  checking it was not used since the plan, and by renaming it into ``tmp/`` first, so a lookup
  sees it whole or not at all and a gc killed mid-way leaves a leftover the next sweep removes.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mergebench.cache import META_FILE, RESERVED, ArtifactCache, leftovers

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Item:
    """One folder of the cache and the decision about it."""

    path: Path
    kind: str  # "leftover", "half-built", "artifact" or "work"
    remove: bool
    reason: str
    bytes: int = 0
    stage: str = ""
    last_used: float = 0.0


def size_of(path: Path) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _dirs(path: Path, *, digests: bool = False) -> list[Path]:
    """Real sub-folders of ``path`` (no symlinks), sorted; only those named like a digest if asked."""
    try:
        entries = [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(Path(e.path) for e in entries if not digests or _DIGEST.match(e.name))


def _is_ours(path: Path) -> bool:
    """An artifact folder whose meta.json says it is this folder (not a user's folder in a wrong --cache-dir)."""
    import json

    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("digest") == path.name and meta.get("stage") == path.parent.name


def _stage_of_work(root: Path, digest: str) -> str:
    found = sorted((root / "locks").glob(f"*-{digest}.lock"))
    return found[0].name[: -len(f"-{digest}.lock")] if found else ""


def plan(cache: ArtifactCache, *, older_than_days: float | None = None, stages: list[str] | None = None) -> list[Item]:
    """Everything gc would remove (``remove=True``) or keeps for a stated reason, without deleting anything."""
    root = cache.root
    items = [Item(x.path, "leftover", x.remove, x.reason, size_of(x.path) if x.remove else 0)
             for x in leftovers.cache_leftovers(root, legacy=True)]
    by_age = older_than_days is not None or stages is not None
    cutoff = time.time() - 86400 * (older_than_days or 0.0)
    looks_like_cache = (root / "locks").is_dir()
    for stage_dir in _dirs(root):
        if stage_dir.name in RESERVED:
            continue
        for path in _dirs(stage_dir, digests=True):
            if not (path / META_FILE).exists():
                if looks_like_cache and leftovers.lock_free(root, path.name):
                    items.append(Item(path, "half-built", True, "no meta.json: a build that never finished",
                                      size_of(path), stage_dir.name))
                continue
            if not by_age or (stages and stage_dir.name not in stages) or not _is_ours(path):
                continue
            used = path.stat().st_mtime
            if used < cutoff:
                days = (time.time() - used) / 86400
                items.append(Item(path, "artifact", True, f"last used {days:.1f} days ago", size_of(path),
                                  stage_dir.name, used))
    if by_age:
        for path in _dirs(root / "work", digests=True):
            stage = _stage_of_work(root, path.name)
            if stages and stage not in stages:
                continue
            changed = leftovers.newest_change(path)
            if changed < cutoff:
                if leftovers.lock_free(root, path.name):
                    items.append(Item(path, "work", True, f"resumable build folder untouched for "
                                      f"{(time.time() - changed) / 86400:.1f} days", size_of(path), stage, changed))
                else:
                    items.append(Item(path, "work", False, "its build is running (lock held)", 0, stage))
    return items


def execute(cache: ArtifactCache, items: list[Item]) -> list[Item]:
    """Remove the planned items; return those removed (an artifact used or locked since the plan is kept)."""
    from filelock import FileLock, Timeout

    removed = []
    for item in items:
        if not item.remove or item.path.is_symlink() or not item.path.is_dir():
            continue
        if item.kind == "artifact":
            lock = FileLock(str(cache.root / "locks" / f"{item.stage}-{item.path.name}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                if item.path.stat().st_mtime > item.last_used:  # used since the plan
                    continue
                doomed = cache.root / "tmp" / leftovers.cache_tmp_name(item.path.name)
                doomed.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item.path, doomed)
            finally:
                lock.release()
            shutil.rmtree(doomed, ignore_errors=True)
        elif item.kind in ("work", "half-built") and not leftovers.lock_free(cache.root, item.path.name):
            continue
        else:
            shutil.rmtree(item.path, ignore_errors=True)
        removed.append(item)
    return removed
