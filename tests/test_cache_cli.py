"""Killed builds' leftovers are swept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

from mergebench import leftovers
from mergebench.cache import ArtifactCache, ArtifactKey

DIGEST = "ab" * 32


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mergebench.cli", *args], capture_output=True, text=True)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "half.bin").write_bytes(b"x" * 100)
    return path


def build(cache: ArtifactCache, n: int, stage: str = "expert") -> Path:
    def write(out: Path) -> None:
        (out / "model.safetensors").write_bytes(bytes(range(256)) * 4)
        (out / "config.json").write_text("{}")

    return cache.get_or_build(ArtifactKey.of(stage, {"n": n}), write, label=f"{stage} {n}").path


def test_the_cache_sweeps_dead_builds_of_this_host_when_it_starts(tmp_path: Path):
    root, host, gone = tmp_path / "cache", leftovers.host(), dead_pid()
    dead = folder(root / "tmp" / f"{DIGEST}.{gone}.0badcafe.{host}")
    live = folder(root / "tmp" / f"{DIGEST}.{os.getpid()}.0badcafe.{host}")
    elsewhere = folder(root / "tmp" / f"{DIGEST}.{gone}.0badcafe.other-node-7")
    legacy = folder(root / "tmp" / f"{DIGEST}.{gone}.0badcafe")  # no host: the start-up sweep keeps it
    scratch = folder(root / "tmp" / "gemma3-gguf-x1y2")  # a builder's own scratch, not a build folder
    ArtifactCache(root)
    assert not dead.exists()
    assert live.exists() and elsewhere.exists() and legacy.exists() and scratch.exists()


def test_a_dead_build_whose_lock_is_held_is_kept(tmp_path: Path):
    root = tmp_path / "cache"
    dead = folder(root / "tmp" / f"{DIGEST}.{dead_pid()}.0badcafe.{leftovers.host()}")
    (root / "locks").mkdir()
    lock = FileLock(str(root / "locks" / f"expert-{DIGEST}.lock"))
    with lock:  # e.g. a process of another pid namespace that reuses this host name
        assert leftovers.sweep_cache_tmp(root) == [] and dead.exists()
    assert leftovers.sweep_cache_tmp(root) == [dead] and not dead.exists()


def test_new_build_folders_are_named_by_host_and_pid(cache: ArtifactCache):
    seen = []
    cache.get_or_build(ArtifactKey.of("demo", {}), lambda out: seen.append(out.name) or (out / "a").write_text("a"))
    digest, pid, nonce, host = seen[0].split(".")
    assert (pid, host) == (str(os.getpid()), leftovers.host()) and len(nonce) == 8


def test_merge_sweeps_dead_merges_temporaries_next_to_out_and_keeps_live_ones(tiny_llama, tiny_experts, tmp_path: Path):
    host = leftovers.host()
    dead = folder(tmp_path / f".merged.tmp-{host}-{dead_pid()}-0badcafe")
    dead_other_out = folder(tmp_path / f".other.tmp-{host}-{dead_pid()}-0badcafe")
    live = folder(tmp_path / f".merged.tmp-{host}-{os.getpid()}-0badcafe")
    elsewhere = folder(tmp_path / f".merged.tmp-other-node-{dead_pid()}-0badcafe")
    user_folder = folder(tmp_path / ".merged.tmp-mine")  # an old-style name (no pid) or a user's own: kept
    done = run("merge", "--method", "soup", "--base", str(tiny_llama), "--expert", f"math={tiny_experts['math']}",
               "--out", str(tmp_path / "merged"), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert not dead.exists() and not dead_other_out.exists()
    assert live.exists() and elsewhere.exists() and user_folder.exists()
    assert sorted(p.name for p in tmp_path.glob(".merged.tmp-*")) == sorted([live.name, elsewhere.name, user_folder.name])
