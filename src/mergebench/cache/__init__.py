"""Content-addressed artifacts: every stage's output lives under the hash of what determined it.

A key is the SHA-256 of the canonical JSON of a stage's inputs (model revision, recipe and
its version, method, version and hyperparameters, task and version, seed, and the keys of
upstream artifacts). Changing any input changes the key, so a cache entry is never stale;
re-running the same case finds every artifact and rebuilds nothing.

Writes are atomic: a builder fills ``<root>/tmp/<digest>.<pid>.<nonce>.<host>/`` and the finished
directory is renamed to ``<root>/<stage>/<digest>``; ``meta.json`` inside records the inputs and
the size and SHA-256 of every file (see :mod:`mergebench.cache.integrity`), which the first
lookup of the artifact in a process checks. A file lock per key makes a second process (an xdist
worker, another shell) wait for the first instead of building the same artifact twice. A builder
that raises leaves nothing behind; one that was killed leaves its tmp folder, which the next cache
of this host sweeps once that process is gone (:mod:`mergebench.cache.leftovers`). A lookup that hits
sets the artifact folder's mtime, so ``mergebench cache gc --older-than DAYS`` knows what is unused.
Each completed build appends a line to ``<root>/builds.jsonl`` (:mod:`mergebench.cache.builds`).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from filelock import FileLock

from mergebench import __version__
from mergebench.cache import builds, integrity, leftovers
from mergebench.errors import CacheFullError

SCHEMA = 1
"""Bump when the layout of artifacts changes incompatibly; it is part of every key."""

META_FILE = integrity.META_FILE
EAGER_VERIFY_BYTES = 64 << 20
"""Artifacts up to this size are verified on lookup; larger ones (weights) when a stage reads them."""
RESERVED = frozenset({"tmp", "locks", "work", "cluster"})
"""Folders of the cache root that hold no stage's artifacts."""

_swept: set[str] = set()


def default_cache_root() -> Path:
    env = os.environ.get("MERGEBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mergebench"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ArtifactKey):
        return value.digest
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot put {type(value).__name__} {value!r} into a cache key")


def canonical_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class ArtifactKey:
    """The identity of an artifact: its stage and the digest of its inputs."""

    stage: str
    digest: str
    inputs: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, stage: str, inputs: dict[str, Any]) -> "ArtifactKey":
        payload = canonical_json({"schema": SCHEMA, "stage": stage, "inputs": inputs})
        return cls(stage, hashlib.sha256(payload.encode()).hexdigest(), json.loads(payload)["inputs"])

    @property
    def short(self) -> str:
        return f"{self.stage}/{self.digest[:12]}"

    def __str__(self) -> str:
        return self.short


@dataclass(frozen=True)
class Artifact:
    key: ArtifactKey
    path: Path
    hit: bool
    seconds: float
    label: str = ""


@dataclass(frozen=True)
class CacheEvent:
    """One lookup: what was asked for, whether it was reused, and how long building took."""

    stage: str
    digest: str
    label: str
    hit: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ArtifactCache:
    """Artifacts under ``root``; ``events`` records every lookup made through this object."""

    def __init__(self, root: Path | str | None = None, *, sweep: bool = True) -> None:
        """``sweep``: remove this host's tmp folders of dead builds (once per root and process; the
        ``mergebench cache`` commands pass False so that a dry run deletes nothing)."""
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.events: list[CacheEvent] = []
        if sweep and str(self.root) not in _swept:  # one listdir when nothing was left over
            _swept.add(str(self.root))
            leftovers.sweep_cache_tmp(self.root)

    def path(self, key: ArtifactKey) -> Path:
        return self.root / key.stage / key.digest

    def lookup(self, key: ArtifactKey) -> Path | None:
        """The artifact's folder if it was built; a small one is checked against its manifest on first use here.

        Raises :class:`~mergebench.cache.integrity.CacheCorruptError` when a file differs from what
        the build wrote. An artifact over :data:`EAGER_VERIFY_BYTES` (weights) is checked by the
        stage that reads it (:func:`~mergebench.cache.integrity.verify_if_artifact`): its path alone
        names it in downstream keys, and a warm run would otherwise hash every model it never loads.
        """
        path = self.path(key)
        if not (path / META_FILE).is_file():
            return None
        if integrity.manifest_bytes(path) > EAGER_VERIFY_BYTES or integrity.ensure_verified(path):
            _mark_used(path)
        return path

    def stages(self) -> list[str]:
        return sorted(p.name for p in _subdirs(self.root) if p.name not in RESERVED)

    def artifacts(self, stages: Iterable[str] = ()) -> Iterator[Path]:
        """Every built artifact's folder (of ``stages``, or all), sorted; symlinks and half-built folders skipped."""
        for name in list(stages) or self.stages():
            for path in sorted(_subdirs(self.root / name)):
                if len(path.name) == 64 and (path / META_FILE).is_file():
                    yield path

    def work_dir(self, key: ArtifactKey) -> Path:
        """A persistent scratch directory for a resumable builder (kept across crashes, removed on success)."""
        path = self.root / "work" / key.digest
        path.mkdir(parents=True, exist_ok=True)
        return path

    def get_or_build(
        self,
        key: ArtifactKey,
        build: Callable[[Path], None],
        *,
        label: str = "",
        on_wait: Callable[[], None] | None = None,
    ) -> Artifact:
        """Return the artifact for ``key``, calling ``build(tmp_dir)`` only if it does not exist yet.

        ``build`` writes its files into the empty directory it is given. ``on_wait`` is called
        once if another process holds the lock (so the caller can say it is waiting).
        """
        label = label or key.short
        found = self.lookup(key)
        if found is not None:
            return self._record(Artifact(key, found, True, 0.0, label))
        lock_path = self.root / "locks" / f"{key.stage}-{key.digest}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Exception:  # filelock.Timeout: someone else is building it
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            found = self.lookup(key)
            if found is not None:  # built by the process we waited for
                return self._record(Artifact(key, found, True, 0.0, label))
            return self._record(self._build_locked(key, build, label))
        finally:
            lock.release()

    def _build_locked(self, key: ArtifactKey, build: Callable[[Path], None], label: str) -> Artifact:
        tmp = self.root / "tmp" / leftovers.cache_tmp_name(key.digest)
        tmp.mkdir(parents=True)
        started = time.perf_counter()
        try:
            build(tmp)
            seconds = time.perf_counter() - started
            meta = {
                "stage": key.stage,
                "digest": key.digest,
                "label": label,
                "inputs": key.inputs,
                "mergebench_version": __version__,
                "build_seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                integrity.MANIFEST_KEY: integrity.build_manifest(tmp),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            final = self.path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # an incomplete leftover without meta.json (pre-atomic crash, manual edit)
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if _out_of_space(error):
                raise CacheFullError(
                    f"the disk holding the artifact cache {self.root} is full ({_free(self.root)} free once the "
                    f"half-written {label} was removed; nothing of it was kept). Free space there, or point "
                    "MERGEBENCH_CACHE (or --mb-cache-dir) at a disk with room: the README says how much a run needs"
                ) from error
            raise
        integrity.mark_verified(final)
        builds.record_build(self.root, stage=key.stage, digest=key.digest, label=label, seconds=seconds)
        work = self.root / "work" / key.digest
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
        return Artifact(key, final, False, seconds, label)

    def _record(self, artifact: Artifact) -> Artifact:
        self.events.append(
            CacheEvent(artifact.key.stage, artifact.key.digest, artifact.label, artifact.hit, round(artifact.seconds, 3))
        )
        return artifact

    def read_meta(self, key: ArtifactKey) -> dict[str, Any]:
        return json.loads((self.path(key) / META_FILE).read_text())


def _mark_used(path: Path) -> None:
    """Stamp the artifact folder's mtime as its last use (its files, and so its manifest, stay as built)."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache is still usable
        pass


def _subdirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _out_of_space(error: BaseException) -> bool:
    """ENOSPC, also when a library wrapped it (safetensors raises its own error with the OS message)."""
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


def _free(path: Path) -> str:
    """Free space on ``path``'s disk (the cache root: a build made its tmp directory there, so it exists)."""
    return f"{shutil.disk_usage(path).free / 2**30:.1f} GiB"
