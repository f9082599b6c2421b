"""Temporary folders of killed builds: named by host and pid, swept once that process is gone.

Builds write into a temporary folder that is renamed into place when complete, so a killed build
(out of memory, a pre-empted node, a second Ctrl-C) leaves its folder behind for good: a
half-written merge of a 9B model is 18 GB. Temporary folders are therefore named with the host
and the pid that own them, and a sweep removes one only when its host is this host, its process
is no longer alive and the artifact's lock is free, so another machine's live build on a shared
cache is never touched (pid liveness cannot be checked across hosts).

    cache builds:    <cache>/tmp/<digest>.<pid>.<nonce>.<host>
    merge --out:     <parent of out>/.<out name>.tmp-<host>-<pid>-<nonce>

Names from before this scheme carry no host (``<digest>.<pid>.<nonce>``, ``.<out>.tmp-<nonce>``).
The start-up sweep keeps them; ``mergebench cache gc`` removes a cache one when its pid is not
alive here and nothing in it changed for a day (an older mergebench on another host could still
be writing it). Old ``--out`` temporaries carry no pid at all and are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

LEGACY_AGE_SECONDS = 24 * 3600


def host() -> str:
    """This machine's name as it appears in temporary names (no dots, so names split unambiguously)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


_CACHE_TMP = re.compile(r"^(?P<digest>[0-9a-f]{64})\.(?P<pid>\d+)\.(?P<nonce>[0-9a-f]{8})(?:\.(?P<host>[A-Za-z0-9-]+))?$")
_OUT_TMP = re.compile(r"^\.(?P<out>.+)\.tmp-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-(?P<nonce>[0-9a-f]{8})$")


def cache_tmp_name(digest: str) -> str:
    return f"{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{host()}"


def out_tmp_path(out: Path) -> Path:
    """A fresh temporary sibling of ``out`` for ``mergebench merge``, after sweeping dead ones next to it."""
    sweep_out_tmp(out.parent)
    return out.parent / f".{out.name}.tmp-{host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (unsure counts as alive)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def lock_free(root: Path, digest: str) -> bool:
    """No process holds the build lock of ``digest`` (its stage is not in a temporary name, so any stage's)."""
    from filelock import FileLock, Timeout

    for path in (root / "locks").glob(f"*-{digest}.lock"):
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        lock.release()
    return True


@dataclass(frozen=True)
class Leftover:
    """A temporary folder and what the sweep makes of it."""

    path: Path
    remove: bool
    reason: str


def newest_change(path: Path) -> float:
    newest = path.stat().st_mtime
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
            except OSError:
                pass
    return newest


def cache_leftovers(root: Path, *, legacy: bool = False) -> list[Leftover]:
    """The build folders in ``<root>/tmp`` with the sweep's decision. One listdir when nothing is left over;
    ``legacy`` also judges host-less names from before (walking them for their newest change)."""
    try:
        entries = sorted(os.scandir(root / "tmp"), key=lambda e: e.name)
    except OSError:  # no tmp folder yet, or one this user cannot list: nothing to sweep
        return []
    here, found = host(), []
    for entry in entries:
        match = _CACHE_TMP.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue  # not a build folder of ours (a builder's own scratch, a symlink)
        path, pid = Path(entry.path), int(match["pid"])
        if match["host"] is None:
            if not legacy:
                continue
            if pid_alive(pid):
                found.append(Leftover(path, False, f"pid {pid} is alive"))
            elif time.time() - newest_change(path) < LEGACY_AGE_SECONDS:
                found.append(Leftover(path, False, f"no host in its name and changed within a day (pid {pid} is not "
                                                   "alive here, but another host may be writing it)"))
            elif not lock_free(root, match["digest"]):
                found.append(Leftover(path, False, "its artifact's lock is held"))
            else:
                found.append(Leftover(path, True, f"pid {pid} is gone and it has not changed for a day"))
        elif match["host"] != here:
            found.append(Leftover(path, False, f"built on host {match['host']}: run the sweep there"))
        elif pid_alive(pid):
            found.append(Leftover(path, False, f"pid {pid} is alive"))
        elif not lock_free(root, match["digest"]):
            found.append(Leftover(path, False, "its artifact's lock is held"))
        else:
            found.append(Leftover(path, True, f"pid {pid} is gone"))
    return found


def out_leftovers(parent: Path) -> list[Leftover]:
    """``mergebench merge`` temporaries in ``parent`` with the sweep's decision (only names of the new scheme)."""
    try:
        entries = sorted(os.scandir(parent), key=lambda e: e.name)
    except OSError:
        return []
    here, found = host(), []
    for entry in entries:
        match = _OUT_TMP.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if match["host"] != here:
            found.append(Leftover(Path(entry.path), False, f"written on host {match['host']}"))
        elif pid_alive(pid):
            found.append(Leftover(Path(entry.path), False, f"pid {pid} is alive"))
        else:
            found.append(Leftover(Path(entry.path), True, f"pid {pid} is gone"))
    return found


def remove(leftovers: list[Leftover]) -> list[Path]:
    """Delete the leftovers marked for removal (real directories only; ``rmtree`` never follows a symlink)."""
    removed = []
    for leftover in leftovers:
        path = leftover.path
        if leftover.remove and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def sweep_cache_tmp(root: Path) -> list[Path]:
    """Remove this host's build folders whose process is gone (the cache does this when it starts)."""
    return remove(cache_leftovers(root))


def sweep_out_tmp(parent: Path) -> list[Path]:
    return remove(out_leftovers(parent))
