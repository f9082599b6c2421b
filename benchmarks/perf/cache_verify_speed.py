"""What the cache's SHA-256 manifests cost: hashing at build time, and verifying on first use.

    python benchmarks/perf/cache_verify_speed.py --model-dir ~/.cache/mergebench/base/<digest> [--gb 4] [--work DIR]

Three artifacts are built through :class:`~mergebench.cache.ArtifactCache` in a scratch cache
under ``--work`` (removed at the end):

* ``--model-dir`` (e.g. the embedded 135M model's base artifact, 540 MB float32) copied in
  with ``shutil.copyfile``, as ``save_pretrained`` would write it: the cache hashes it right
  after the build (``hashed_after`` in its manifest);
* ``--gb`` GB of bf16 tensors written by ``ShardedWriter`` in 2 GB shards (a 9B model is 18 GB,
  9 such shards), once as mergebench writes them (each shard hashed as it streams) and once with
  hashing switched off, to see what hashing while writing adds;
* then each artifact is verified as a first lookup does (:func:`cache_integrity.check`): warm
  (files in the page cache, as right after a build or a previous read) and cold (each file
  evicted with ``posix_fadvise(DONTNEED)`` first, so it is read from disk).

The figures extrapolate linearly to 18 GB. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path


def evict(directory: Path) -> None:
    """Drop ``directory``'s files from the page cache (this process's files only; needs no root)."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def verify(directory: Path, label: str, size: int) -> float:
    from mergebench.cache import integrity as cache_integrity

    rates = []
    for state in ("warm", "cold"):
        if state == "cold":
            evict(directory)
        started = time.perf_counter()
        verdict = cache_integrity.check(directory)
        seconds = time.perf_counter() - started
        assert verdict.status == "ok", verdict.problems
        rates.append(size / seconds / 1e9)
        print(f"  verify {label} ({state}): {size / 1e9:.2f} GB in {seconds:.2f}s = {size / seconds / 1e9:.2f} GB/s "
              f"-> 18 GB in {18e9 / (size / seconds):.1f}s")
    return rates[0]


class _NoHash:
    def __init__(self, data: bytes = b"") -> None:
        pass

    def update(self, data) -> None:
        pass

    def hexdigest(self) -> str:
        return "0" * 64


def write_shards(out: Path, gigabytes: float) -> None:
    import torch

    from mergebench.checkpoint import ShardedWriter

    writer = ShardedWriter(out)
    rows = 16384
    tensor = torch.ones(rows, 8192, dtype=torch.bfloat16)  # 256 MiB; the values do not change SHA-256's speed
    for i in range(int(gigabytes * 1e9 // tensor.nbytes)):
        writer.add(f"layers.{i}.weight", tensor)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="a checkpoint folder to copy in (the embedded 135M base artifact)")
    parser.add_argument("--gb", type=float, default=4.0, help="size of the ShardedWriter artifact")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    from mergebench.cache import ArtifactCache, ArtifactKey
    from mergebench.cache import integrity as cache_integrity

    print(f"CPU: {_cpu()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    data = os.urandom(256 * 2**20)
    started = time.perf_counter()
    for _ in range(8):
        hashlib.sha256(data).digest()
    print(f"  sha256 in memory, one thread: {8 * len(data) / (time.perf_counter() - started) / 1e9:.2f} GB/s")

    work = Path(tempfile.mkdtemp(prefix="cache-verify-", dir=args.work))
    try:
        cache = ArtifactCache(work / "cache")
        if args.model_dir:
            def copy(out: Path) -> None:
                for path in sorted(args.model_dir.iterdir()):
                    if path.is_file() and path.name != "meta.json":
                        shutil.copyfile(path, out / path.name)

            artifact = cache.get_or_build(ArtifactKey.of("copy", {"from": str(args.model_dir)}), copy)
            meta = cache.read_meta(artifact.key)
            after = meta["manifest"]["hashed_after"]
            size = sum(e["size"] for e in meta["manifest"]["files"].values())
            print(f"model copied in as save_pretrained writes ({size / 1e9:.2f} GB): build {meta['build_seconds']:.2f}s, "
                  f"then hashed after the build: {after['bytes'] / 1e9:.2f} GB in {after['seconds']:.2f}s")
            verify(artifact.path, "model", size)

        for hashing in (False, True):
            real = hashlib.sha256
            if not hashing:  # the control: no SHA-256 anywhere (the manifest it leaves is discarded)
                hashlib.sha256 = _NoHash
            try:
                artifact = cache.get_or_build(ArtifactKey.of("shards", {"gb": args.gb, "hashing": hashing}),
                                              lambda out: write_shards(out, args.gb))
            finally:
                hashlib.sha256 = real
            meta = cache.read_meta(artifact.key)
            size = sum(e["size"] for e in meta["manifest"]["files"].values())
            after = meta["manifest"]["hashed_after"]
            print(f"ShardedWriter {size / 1e9:.2f} GB, hashing while writing {'on' if hashing else 'off'}: "
                  f"build {meta['build_seconds']:.2f}s (+{after['seconds']:.2f}s hashing {after['bytes'] / 1e9:.2f} GB after)")
            if hashing:
                verify(artifact.path, "shards", size)
            else:
                shutil.rmtree(artifact.path)
                cache_integrity.forget_verified()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
