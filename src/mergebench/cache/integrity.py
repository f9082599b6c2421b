"""Which bytes the cache wrote: a SHA-256 manifest per artifact, checked on first use in a process.

An artifact's key names its inputs, not its bytes, so once built it was trusted forever: bytes
changed afterwards (a stray write, a bad copy, a disk fault) were merged and evaluated as if they
were the expert. Now every file of an artifact has its size and SHA-256 in the artifact's
``meta.json`` (``"manifest"``), and the first lookup of an artifact in a process checks them
before handing out its path.

Where the hashes come from, cheapest first:

* while writing, where mergebench writes the bytes: :class:`~mergebench.checkpoint.ShardedWriter`
  hashes each shard as it streams it (merges, statistics, synthetic experts), :func:`write_bytes`
  and :func:`copy_stream` hash small files and wheel members as they go. They :func:`record` the
  digest with the file's identity (inode, size, mtime), and :func:`build_manifest` takes it
  from there if the file is unchanged since;
* right after the build, for files third-party code wrote inside a builder (transformers'
  ``save_pretrained`` in the base builders and finetune recipes, the pipeline's JSON results):
  :func:`build_manifest` reads them back, from the page cache since they were just written.
  That is CPU only, about 1 GB/s on one core here (the README has the measured figures).

Verification reads every file (threads across files, so a sharded 9B checkpoint hashes on
several cores), when the files are about to be read: a lookup checks small artifacts (results,
data) at once, and the stages that load weights check theirs first (:func:`verify_if_artifact`),
so a warm run that only needs cached results never hashes gigabytes of weights. It runs once
per artifact per process and is remembered by the files' stat
identities, so a later lookup in the same process only stats the files. An artifact built
before manifests existed is *unverified*: used as before, with a one-line note (once per cache
and process: a warm run over an old cache would otherwise print one per evaluation).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mergebench import progress
from mergebench.errors import MergebenchError

META_FILE = "meta.json"
MANIFEST_KEY = "manifest"
_BLOCK = 8 * 1024 * 1024
_PARALLEL_FROM = 64 * 1024 * 1024
"""Files at least this big are hashed in threads when an artifact has several of them."""


class CacheCorruptError(MergebenchError):
    """A cached artifact whose files are not the bytes the cache wrote."""


# -- hashing while writing ---------------------------------------------------------------------
_written: dict[str, tuple[tuple[int, int, int], str]] = {}
_written_lock = threading.Lock()


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def record(path: Path | str, sha256: str) -> None:
    """Remember the digest of a file just written by mergebench (taken by :func:`build_manifest`)."""
    path = os.path.abspath(path)
    with _written_lock:
        _written[path] = (_identity(os.stat(path)), sha256)


def _recorded(path: str, stat: os.stat_result) -> str | None:
    with _written_lock:
        found = _written.pop(path, None)
    return found[1] if found is not None and found[0] == _identity(stat) else None


def write_bytes(path: Path | str, data: bytes) -> str:
    """Write ``data`` to ``path``, recording its SHA-256; return the digest."""
    digest = hashlib.sha256(data).hexdigest()
    with open(path, "wb") as out:
        out.write(data)
    record(path, digest)
    return digest


def copy_stream(source: BinaryIO, path: Path | str, digest: "hashlib._Hash | None" = None) -> str:
    """Copy ``source`` into a new file ``path``, hashing the bytes on their way; record and return the digest."""
    digest = digest or hashlib.sha256()
    with open(path, "wb") as out:
        while block := source.read(_BLOCK):
            digest.update(block)
            out.write(block)
    record(path, digest.hexdigest())
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    """The SHA-256 of a file, read in 8 MiB blocks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        try:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        while count := handle.readinto(buffer):
            digest.update(view[:count])  # hashlib drops the GIL for blocks this size
    return digest.hexdigest()


# -- manifests ---------------------------------------------------------------------------------
def _files(directory: Path) -> dict[str, Path]:
    """Every file of an artifact by its relative POSIX path, ``meta.json`` (which holds the manifest) aside."""
    found = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            path = Path(folder) / name
            relative = path.relative_to(directory).as_posix()
            if relative != META_FILE:
                found[relative] = path
    return dict(sorted(found.items()))


def build_manifest(directory: Path) -> dict:
    """Size and SHA-256 of every file in ``directory``: recorded digests where the file is unchanged
    since it was written, else hashed now (``hashed_after`` says how many bytes that took, and how long)."""
    files, after_bytes, after_files = {}, 0, 0
    started = time.perf_counter()
    for relative, path in _files(directory).items():
        stat = path.stat()
        digest = _recorded(os.path.abspath(path), stat)
        if digest is None:
            digest = sha256_file(path)
            after_bytes += stat.st_size
            after_files += 1
        files[relative] = {"size": stat.st_size, "sha256": digest}
    seconds = time.perf_counter() - started
    return {"algorithm": "sha256", "files": files,
            "hashed_after": {"files": after_files, "bytes": after_bytes, "seconds": round(seconds, 3)}}


@dataclass
class Verdict:
    """``ok``, ``corrupt`` (``problems`` name each file) or ``unverified`` (no manifest)."""

    status: str
    problems: list[str] = field(default_factory=list)
    bytes_hashed: int = 0
    seconds: float = 0.0


def check(directory: Path) -> Verdict:
    """Compare ``directory``'s files with its manifest: sizes and names first (stat only), then the hashes."""
    started = time.perf_counter()
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        return Verdict("corrupt", [f"{META_FILE} is unreadable ({exc})"])
    manifest = meta.get(MANIFEST_KEY) if isinstance(meta, dict) else None
    if not manifest:
        return Verdict("unverified")
    expected = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(expected, dict) or not all(isinstance(e, dict) and {"size", "sha256"} <= e.keys()
                                                 for e in expected.values()):
        return Verdict("corrupt", [f"the manifest in {META_FILE} is malformed"])
    present = _files(directory)
    problems = [f"{name} is missing" for name in expected if name not in present]
    problems += [f"{name} was not written by the build (not in the manifest)" for name in present if name not in expected]
    to_hash = []
    for name, entry in expected.items():
        if name in present:
            try:
                size = present[name].stat().st_size
            except OSError as exc:  # a dangling symlink, no permission
                problems.append(f"{name} is unreadable ({exc.strerror})")
                continue
            if size != entry["size"]:
                problems.append(f"{name} has {size} bytes, the build wrote {entry['size']} (truncated or replaced)")
            else:
                to_hash.append(name)
    if problems:
        return Verdict("corrupt", problems, 0, time.perf_counter() - started)
    big = [n for n in to_hash if expected[n]["size"] >= _PARALLEL_FROM]
    workers = min(4, os.cpu_count() or 1, len(big))
    try:
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="mergebench-verify") as pool:
                digests = dict(zip(to_hash, pool.map(lambda n: sha256_file(present[n]), to_hash)))
        else:
            digests = {n: sha256_file(present[n]) for n in to_hash}
    except OSError as exc:
        return Verdict("corrupt", [f"{Path(exc.filename or '?').name} is unreadable ({exc.strerror})"], 0,
                       time.perf_counter() - started)
    for name in to_hash:
        if digests[name] != expected[name]["sha256"]:
            problems.append(f"{name} has SHA-256 {digests[name][:16]}…, the build wrote {expected[name]['sha256'][:16]}… "
                            "(same size: its bytes were changed after the build)")
    hashed = sum(expected[n]["size"] for n in to_hash)
    return Verdict("corrupt" if problems else "ok", problems, hashed, time.perf_counter() - started)


def describe(directory: Path) -> str:
    """``cached artifact expert/3f2a9c0d1e4b (expert smollm2/math)``: what a user can find on disk."""
    label = ""
    try:
        label = json.loads((directory / META_FILE).read_text()).get("label", "")
    except (OSError, ValueError):
        pass
    return f"cached artifact {directory.parent.name}/{directory.name[:12]}" + (f" ({label})" if label else "")


def fix(directory: Path) -> str:
    root = directory.parent.parent
    return (f"it is not used. Run `mergebench cache verify --cache-dir {root}` to check the others, and delete "
            f"{directory} so it is rebuilt on the next run")


# -- once per process --------------------------------------------------------------------------
_verified: dict[str, tuple] = {}
_noted: set[str] = set()


def _signature(directory: Path) -> tuple:
    """The stat identities of an artifact's files: unchanged since verified means no need to hash again."""
    def identity(path: Path) -> tuple[int, int, int]:
        try:
            return _identity(path.stat())
        except OSError:
            return (0, -1, 0)  # gone or dangling: differs from any real file, so it is checked

    return tuple((name, identity(path)) for name, path in _files(directory).items()) + (identity(directory / META_FILE),)


def mark_verified(directory: Path) -> None:
    """A build of this process: its manifest was just computed from these very files."""
    _verified[str(directory)] = _signature(directory)


def ensure_verified(directory: Path) -> bool:
    """Check ``directory`` against its manifest unless this process already did and no file changed since.

    Returns True when it checked now (the first use in this process). A mismatch raises
    :class:`CacheCorruptError` naming the artifact, the file and the fix; an artifact without a
    manifest is used, with one note per cache and process.
    """
    key = str(directory)
    signature = _signature(directory)
    if _verified.get(key) == signature:
        return False
    verdict = check(directory)
    if verdict.status == "corrupt":
        _verified.pop(key, None)
        raise CacheCorruptError(f"{describe(directory)} is corrupt: {'; '.join(verdict.problems)}; {fix(directory)}")
    if verdict.status == "unverified" and str(directory.parent.parent) not in _noted:
        _noted.add(str(directory.parent.parent))  # one line per cache and process, not one per old artifact
        progress.note(f"  [unverified] {describe(directory)} was built before mergebench recorded file hashes, "
                      f"as may be others in {directory.parent.parent}: used as is (`mergebench cache verify` lists "
                      "them; delete one to have it rebuilt with hashes)")
    _verified[key] = signature
    return True


def manifest_bytes(directory: Path) -> int:
    """The bytes an artifact's manifest lists (0 without one): what verifying it would read."""
    try:
        manifest = json.loads((directory / META_FILE).read_text()).get(MANIFEST_KEY) or {}
        return sum(int(entry.get("size", 0)) for entry in (manifest.get("files") or {}).values())
    except (OSError, ValueError, AttributeError, TypeError):
        return 0  # unreadable or malformed: small enough to be checked now, which reports it


def verify_if_artifact(directory: Path | str) -> bool:
    """Check a folder given on the command line when it is a cache artifact (its meta.json names it); True if it is."""
    directory = Path(directory).resolve()
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("digest") != directory.name or meta.get("stage") != directory.parent.name:
        return False
    ensure_verified(directory)
    return True


def forget_verified() -> None:
    """Check every artifact again on its next lookup, as a new process would."""
    _verified.clear()
    _noted.clear()
