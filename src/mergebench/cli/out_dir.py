"""``mergebench merge --out``: never over an input, found writable before any work, replaced in one rename.

``--force`` once ran ``rmtree(out)`` without looking: ``--out`` equal to the base folder, or to a
folder holding the experts, deleted them and left the merge in their place. Now:

* an ``--out`` that is, contains or sits inside an input (base, experts, samples files, the
  statistics cache) is refused whatever ``--force`` says; paths are compared after resolving
  symlinks, and by device and inode, so a symlink or a bind mount of an input is the input;
* an existing file is never replaced, and ``--force`` replaces only a folder that is empty or
  holds a checkpoint (``config.json``), never a folder of other things;
* the folder the merge writes in is probed (a folder created and removed) before the inputs are
  read, so a read-only place fails in a second, not after minutes of statistics;
* the merge is written to a temporary sibling and renamed into place; an old ``--out`` is moved
  aside first and deleted only once the new one is in place, so ``--out`` is always the old
  merge or the new one, never a half-written or missing folder (but for the instant between
  the two renames).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

from mergebench.cli.inputs import named, writable_folder
from mergebench.errors import UsageError


def _chain(path: Path) -> list[tuple[int, int]]:
    """(device, inode) of ``path`` and of each existing folder above it, nearest first."""
    real = Path(os.path.realpath(path))
    found = []
    for candidate in (real, *real.parents):
        try:
            stat = candidate.stat()
        except OSError:
            continue
        found.append((stat.st_dev, stat.st_ino))
    return found


def relation(out: Path, item: Path) -> str | None:
    """How ``out`` and an input ``item`` overlap ("is", "contains", "is inside"), or None."""
    out_chain, item_chain = _chain(out), _chain(item)
    out_id = out_chain[0] if out.exists() else None
    item_id = item_chain[0] if item.exists() else None
    if out_id is not None and out_id == item_id:
        return "is"
    if out_id is not None and out_id in item_chain:
        return "contains"
    if item_id is not None and item_id in out_chain:
        return "is inside"
    real_out, real_item = Path(os.path.realpath(out)), Path(os.path.realpath(item))  # paths not created yet
    if real_out == real_item:
        return "is"
    if real_item.is_relative_to(real_out):
        return "contains"
    if real_out.is_relative_to(real_item):
        return "is inside"
    return None


def check_out(out: Path, inputs: Mapping[str, Path], *, force: bool) -> Path:
    """The real path to write the merge to, or an error naming why ``out`` must not be written.

    ``inputs`` maps how the user named each input (``--base``, ``--expert math=``, ...) to its path.
    """
    for name, item in inputs.items():
        overlap = relation(out, Path(item))
        if overlap:
            raise UsageError(f"--out {out} {overlap} {named(name, item)}; a merge never writes over its inputs, "
                             "whatever --force says: choose another --out")
    real = Path(os.path.realpath(out))
    if real.exists() and not real.is_dir():
        raise UsageError(f"--out {out} is a file; a merge writes a checkpoint folder and never replaces a file, "
                         "also with --force: choose another --out")
    if real.is_dir():
        entries = list(real.iterdir())
        if entries and not force:
            raise UsageError(f"--out {out} exists and is not empty; choose another --out or pass --force to replace it")
        if entries and not (real / "config.json").is_file():
            raise UsageError(f"--out {out} holds files but no checkpoint (no config.json); --force replaces only an "
                             "earlier checkpoint: delete the folder yourself or choose another --out")
    writable_folder(real.parent, f"--out {out}")
    return real


def missing_parents(out: Path) -> list[Path]:
    """The folders above ``out`` that do not exist yet, outermost first (to remove if the merge fails)."""
    missing = []
    for parent in Path(out).parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def install(tmp: Path, out: Path, aside: Path) -> None:
    """Put the finished merge ``tmp`` at ``out``; an existing ``out`` is moved to ``aside`` and deleted after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def remove_created(folders: list[Path]) -> None:
    """Remove the folders a failed merge created above ``--out``, innermost first, if they are still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return
