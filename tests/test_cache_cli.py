"""Killed builds' leftovers are swept, ``mergebench cache verify`` and ``mergebench cache gc`` as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from mergebench.cache import ArtifactCache, ArtifactKey, leftovers
from mergebench.cache import integrity as cache_integrity

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


def test_cache_verify_reports_ok_corrupt_and_unverified(tmp_path: Path):
    cache = ArtifactCache(tmp_path / "cache")
    ok, corrupt, old = build(cache, 1), build(cache, 2), build(cache, 3, stage="eval")
    with open(corrupt / "model.safetensors", "r+b") as handle:
        handle.seek(10)
        handle.write(b"\x00\x00\x80\x3f")  # 1.0f: same size, finite
    meta = json.loads((old / "meta.json").read_text())
    del meta["manifest"]
    (old / "meta.json").write_text(json.dumps(meta))
    done = run("cache", "verify", "--cache-dir", str(cache.root))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert f"OK          expert/{ok.name[:12]} (expert 1)" in lines
    assert any(line.startswith(f"CORRUPT     expert/{corrupt.name[:12]} (expert 2): model.safetensors has SHA-256")
               for line in lines)
    assert any(line.startswith(f"UNVERIFIED  eval/{old.name[:12]} (eval 3): no manifest") for line in lines)
    assert lines[-1].startswith(f"3 artifacts in {cache.root}: 1 OK, 1 corrupt, 1 unverified")
    assert f"delete {corrupt} to have it rebuilt" in done.stderr
    done = run("cache", "verify", "--cache-dir", str(cache.root), "--stage", "eval")
    assert done.returncode == 0 and "1 artifacts" in done.stdout
    done = run("cache", "verify", "--cache-dir", str(cache.root), "--stage", "merged")
    assert done.returncode == 2 and "no stage 'merged'" in done.stderr and "stages there: eval, expert" in done.stderr


def test_cache_gc_lists_by_default_removes_with_yes_and_never_touches_anything_outside(tmp_path: Path):
    cache = ArtifactCache(tmp_path / "cache")
    root = cache.root
    outside = folder(tmp_path / "my-models" / "precious")
    recent, stale = build(cache, 1), build(cache, 2)
    merged = build(cache, 3, stage="merged")
    (recent / "link-out").symlink_to(outside, target_is_directory=True)  # rmtree must not follow it
    os.utime(stale, (time.time() - 10 * 86400,) * 2)
    os.utime(merged, (time.time() - 10 * 86400,) * 2)
    leftover = folder(root / "tmp" / f"{DIGEST}.{dead_pid()}.0badcafe.{leftovers.host()}")
    (leftover / "link-out").symlink_to(outside, target_is_directory=True)
    (root / "expert" / ("cd" * 32)).symlink_to(outside, target_is_directory=True)  # an "artifact" that is a symlink
    half = folder(root / "expert" / ("ef" * 32))  # no meta.json: a build that never finished
    before = sorted(str(p) for p in root.rglob("*"))

    done = run("cache", "gc", "--cache-dir", str(root))
    assert done.returncode == 0, done.stderr
    assert f"tmp/{leftover.name}  (leftover: pid" in done.stdout and f"expert/{half.name}  (half-built" in done.stdout
    assert "dry run: 2 folders" in done.stdout and "pass --yes" in done.stdout
    assert sorted(str(p) for p in root.rglob("*")) == before  # a dry run deletes nothing

    done = run("cache", "gc", "--cache-dir", str(root), "--older-than", "5", "--stage", "expert")
    assert f"expert/{stale.name}  (artifact: last used 10.0 days ago)" in done.stdout
    assert recent.name not in done.stdout and merged.name not in done.stdout  # recent; another stage
    assert sorted(str(p) for p in root.rglob("*")) == before

    lock = FileLock(str(root / "locks" / f"expert-{stale.name}.lock"))
    with lock:  # a process holding its lock: kept
        done = run("cache", "gc", "--cache-dir", str(root), "--older-than", "5", "--yes")
    assert done.returncode == 0, done.stderr
    assert "removed 3 folders" in done.stdout and "kept 1 used or locked since the listing" in done.stdout
    assert stale.exists() and not merged.exists() and not leftover.exists() and not half.exists()
    assert recent.exists() and (root / "expert" / ("cd" * 32)).is_symlink()
    assert (outside / "half.bin").read_bytes() == b"x" * 100 and sorted(p.name for p in outside.iterdir()) == ["half.bin"]

    done = run("cache", "gc", "--cache-dir", str(root), "--stage", "expert", "--yes")
    assert not stale.exists() and not recent.exists()
    assert (outside / "half.bin").is_file() and (root / "expert" / ("cd" * 32)).is_symlink()
    cache_integrity.forget_verified()
    assert cache.lookup(ArtifactKey.of("expert", {"n": 1})) is None


def test_gc_in_a_folder_that_is_not_a_cache_finds_nothing_to_remove(tmp_path: Path):
    home = tmp_path / "home"
    for name in ("projects", "models"):
        folder(home / name / ("ab" * 32))  # digest-like names, but no meta.json naming them
    (home / "models" / ("ab" * 32) / "meta.json").write_text(json.dumps({"stage": "other", "digest": "x"}))
    done = run("cache", "gc", "--cache-dir", str(home), "--stage", "models", "--stage", "projects", "--yes")
    assert done.returncode == 0, done.stderr
    assert "removed 0 folders" in done.stdout
    assert (home / "projects" / ("ab" * 32) / "half.bin").is_file() and (home / "models" / ("ab" * 32)).is_dir()


@pytest.mark.parametrize("args", [["gc", "--older-than", "-1"], ["verify"]])
def test_cache_commands_say_what_is_wrong_in_one_line(tmp_path: Path, args):
    done = run("cache", *args, "--cache-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_every_command_refuses_a_cached_expert_overwritten_in_place(tiny_llama, tmp_path: Path):
    """The next process that uses it (pipeline, merge, eval) stops with one line naming the file and the fix."""
    from tests.test_cache_integrity import overwrite_floats

    cache = ["--cache-dir", str(tmp_path / "cache")]
    done = run("finetune", "--base", "tiny-llama", "--domain", "math", *cache)
    assert done.returncode == 0, done.stderr
    (expert,) = (tmp_path / "cache" / "expert").iterdir()
    overwrite_floats(expert / "model.safetensors")
    for args in (["finetune", "--base", "tiny-llama", "--domain", "math", *cache],
                 ["merge", "--method", "soup", "--base", str(tiny_llama), "--expert", f"math={expert}",
                  "--out", str(tmp_path / "merged"), "--device", "cpu"],
                 ["eval", "--model", str(expert), "--task", "toy_math", "--device", "cpu", *cache]):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"cached artifact expert/{expert.name[:12]} (expert tiny-llama/math) is corrupt: model.safetensors has " \
               "SHA-256" in done.stderr and f"delete {expert} so it is rebuilt" in done.stderr
    assert not (tmp_path / "merged").exists()
