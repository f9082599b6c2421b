"""The cache notices bytes it did not write: manifests at build time, checks on first use in a process."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

import pytest

from mergebench import plugin_manager, progress
from mergebench.cache import ArtifactCache, ArtifactKey
from mergebench.cache import integrity as cache_integrity
from mergebench.cache.integrity import CacheCorruptError
from mergebench.checkpoint import ShardedWriter


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def overwrite_floats(weights: Path, value: float = 0.5, count: int = 16) -> None:
    """Overwrite the first ``count`` values of the first float32 tensor in place: same size, finite values."""
    with open(weights, "r+b") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
        entry = next(e for n, e in sorted(header.items()) if n != "__metadata__" and e["dtype"] == "F32")
        handle.seek(8 + size + entry["data_offsets"][0])
        handle.write(struct.pack(f"<{count}f", *[value] * count))


@pytest.fixture(autouse=True)
def fresh_process():
    """Each test starts as a new process would: nothing verified yet."""
    cache_integrity.forget_verified()
    yield
    cache_integrity.forget_verified()


def build_checkpoint(cache: ArtifactCache, n: int = 1) -> Path:
    import torch

    def build(out: Path) -> None:
        writer = ShardedWriter(out, max_shard_bytes=2048)
        for i in range(4):
            writer.add(f"layer.{i}.weight", torch.full((16, 32), float(i)))
        writer.close()
        (out / "config.json").write_text('{"model_type": "demo"}')  # written by "third-party" code: hashed after

    return cache.get_or_build(ArtifactKey.of("expert", {"n": n}), build, label="demo expert").path


def test_every_file_has_its_sha256_in_meta_and_written_shards_are_not_read_back(cache: ArtifactCache):
    path = build_checkpoint(cache)
    manifest = json.loads((path / "meta.json").read_text())["manifest"]
    files = sorted(p.name for p in path.iterdir() if p.name != "meta.json")
    assert sorted(manifest["files"]) == files and len([f for f in files if f.endswith(".safetensors")]) == 4
    for name, entry in manifest["files"].items():
        assert entry == {"size": (path / name).stat().st_size, "sha256": sha256(path / name)}
    # the shards and the index were hashed while the writer streamed them; only config.json afterwards
    assert manifest["hashed_after"]["files"] == 1
    assert manifest["hashed_after"]["bytes"] == (path / "config.json").stat().st_size


def test_writer_hashes_match_the_files(tmp_path: Path):
    import torch

    writer = ShardedWriter(tmp_path, max_shard_bytes=4096)
    for i in range(3):
        writer.add(f"t{i}", torch.arange(2048, dtype=torch.float32) * i)
    writer.close()
    assert writer.hashes and all(sha256(tmp_path / name) == digest for name, digest in writer.hashes.items())


def test_a_digest_recorded_for_a_file_changed_since_is_not_trusted(tmp_path: Path):
    path = tmp_path / "data.bin"
    cache_integrity.write_bytes(path, b"as written")
    path.write_bytes(b"changed!!!")  # a builder that rewrites a file after mergebench wrote it
    manifest = cache_integrity.build_manifest(tmp_path)
    assert manifest["files"]["data.bin"]["sha256"] == sha256(path)


def test_bytes_overwritten_in_place_are_an_error_naming_artifact_file_and_fix(cache: ArtifactCache):
    path = build_checkpoint(cache)
    overwrite_floats(path / "model-00002-of-00004.safetensors")
    cache_integrity.forget_verified()  # the next process
    with pytest.raises(CacheCorruptError) as raised:
        build_checkpoint(cache)
    message = str(raised.value)
    assert f"cached artifact expert/{path.name[:12]} (demo expert) is corrupt" in message
    assert "model-00002-of-00004.safetensors has SHA-256" in message and "same size" in message
    assert f"mergebench cache verify --cache-dir {cache.root}" in message and f"delete {path}" in message
    assert "\n" not in message


@pytest.mark.parametrize("damage, said", [
    (lambda p: (p / "config.json").unlink(), "config.json is missing"),
    (lambda p: (p / "extra.safetensors").write_bytes(b"x"), "extra.safetensors was not written by the build"),
    (lambda p: (p / "model-00001-of-00004.safetensors").write_bytes(b"short"), "has 5 bytes, the build wrote"),
    (lambda p: (p / "meta.json").write_text("{"), "meta.json is unreadable"),
    (lambda p: ((p / "config.json").unlink(), (p / "config.json").symlink_to(p / "gone")), "config.json is unreadable"),
])
def test_missing_extra_truncated_files_and_a_broken_meta_are_corrupt(cache: ArtifactCache, damage, said):
    path = build_checkpoint(cache)
    damage(path)
    verdict = cache_integrity.check(path)
    assert verdict.status == "corrupt" and said in "; ".join(verdict.problems)
    cache_integrity.forget_verified()
    with pytest.raises(CacheCorruptError, match=said.split(" ")[0]):
        cache.lookup(ArtifactKey.of("expert", {"n": 1}))


def test_each_artifact_is_hashed_once_per_process(cache: ArtifactCache, monkeypatch):
    path = build_checkpoint(cache)
    cache_integrity.forget_verified()
    hashed = []
    real = cache_integrity.sha256_file
    monkeypatch.setattr(cache_integrity, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    key = ArtifactKey.of("expert", {"n": 1})
    assert cache.lookup(key) == path
    assert len(hashed) == 6  # four shards, the index, config.json
    assert cache.lookup(key) == path and ArtifactCache(cache.root).lookup(key) == path
    assert len(hashed) == 6


def test_an_artifact_built_in_this_process_is_not_hashed_again_on_its_next_lookup(cache: ArtifactCache, monkeypatch):
    build_checkpoint(cache)
    monkeypatch.setattr(cache_integrity, "sha256_file", lambda p: pytest.fail(f"{p} hashed again"))
    assert build_checkpoint(cache).is_dir()


def test_an_artifact_written_before_manifests_loads_with_a_one_line_note(cache: ArtifactCache):
    path = build_checkpoint(cache)
    meta = json.loads((path / "meta.json").read_text())
    del meta["manifest"]
    (path / "meta.json").write_text(json.dumps(meta))
    cache_integrity.forget_verified()
    other = build_checkpoint(cache, 2)
    meta = json.loads((other / "meta.json").read_text())
    del meta["manifest"]
    (other / "meta.json").write_text(json.dumps(meta))
    cache_integrity.forget_verified()
    out = io.StringIO()
    with progress.use_sink(progress.LineSink(out)):
        assert build_checkpoint(cache) == path  # a hit, not a rebuild
        assert build_checkpoint(cache) == path and build_checkpoint(cache, 2) == other
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, "one note per cache and process, not one per old artifact"
    assert f"[unverified] cached artifact expert/{path.name[:12]} (demo expert) was built before mergebench recorded " \
           "file hashes" in lines[0] and "mergebench cache verify" in lines[0]
    assert cache_integrity.check(path).status == cache_integrity.check(other).status == "unverified"


def test_a_lookup_that_hits_marks_the_artifact_used(cache: ArtifactCache):
    import os

    path = build_checkpoint(cache)
    os.utime(path, (1_000_000, 1_000_000))
    cache_integrity.forget_verified()
    build_checkpoint(cache)
    assert path.stat().st_mtime > 1_000_000


@pytest.mark.parametrize("eager_bytes", [64 << 20, 0], ids=["checked-on-lookup", "checked-when-read"])
def test_a_corrupt_expert_is_not_merged(tmp_path: Path, monkeypatch, eager_bytes):
    """The pipeline on the tiny model: an expert overwritten in place stops the merge before it is built,
    whether the lookup checks it (small artifacts) or the merge that reads it (weights over the threshold)."""
    import mergebench.cache
    from mergebench.pipeline import Pipeline, RunContext

    monkeypatch.setattr(mergebench.cache, "EAGER_VERIFY_BYTES", eager_bytes)
    registries = plugin_manager.registries()
    model = registries.models.get("tiny-llama")
    cache = ArtifactCache(tmp_path / "cache")
    experts = Pipeline(RunContext(cache=cache, device="cpu"), registries).experts(model)
    overwrite_floats(experts["math"].path / "model.safetensors")
    cache_integrity.forget_verified()
    pipeline = Pipeline(RunContext(cache=cache, device="cpu"), registries)
    with pytest.raises(CacheCorruptError, match=r"cached artifact expert/\w{12} \(expert tiny-llama/math\) is corrupt: "
                                                r"model.safetensors has SHA-256"):
        pipeline.merged(model, registries.methods.get("task_arithmetic"))
    assert not (cache.root / "merged").exists()


def test_weights_are_hashed_by_the_stage_that_reads_them_not_by_a_lookup(cache: ArtifactCache, monkeypatch):
    """A warm run looks up every model to key its results but loads none: it must not hash gigabytes."""
    import mergebench.cache

    path = build_checkpoint(cache)
    cache_integrity.forget_verified()
    monkeypatch.setattr(mergebench.cache, "EAGER_VERIFY_BYTES", 0)
    hashed = []
    real = cache_integrity.sha256_file
    monkeypatch.setattr(cache_integrity, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert cache.lookup(ArtifactKey.of("expert", {"n": 1})) == path
    assert hashed == []
    assert cache_integrity.verify_if_artifact(path) and len(hashed) == 6
    overwrite_floats(path / "model-00002-of-00004.safetensors")
    with pytest.raises(CacheCorruptError, match="model-00002-of-00004.safetensors has SHA-256"):
        cache_integrity.verify_if_artifact(path)
