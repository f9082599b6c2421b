"""Content-addressed artifacts: keys, atomic writes, locking across processes, reuse."""

from __future__ import annotations

import errno
import multiprocessing
import time
from pathlib import Path

import pytest

from mergebench.cache import ArtifactCache, ArtifactKey
from mergebench.errors import CacheFullError


def test_keys_depend_on_every_input_and_not_on_their_order():
    a = ArtifactKey.of("merged", {"method": "ties", "params": {"density": 0.2, "scaling": 1.0}, "seed": 0})
    b = ArtifactKey.of("merged", {"seed": 0, "params": {"scaling": 1.0, "density": 0.2}, "method": "ties"})
    assert a == b and a.digest == b.digest
    for changed in ({"method": "dare"}, {"params": {"density": 0.3, "scaling": 1.0}}, {"seed": 1}):
        other = ArtifactKey.of("merged", {"method": "ties", "params": {"density": 0.2, "scaling": 1.0}, "seed": 0, **changed})
        assert other.digest != a.digest
    assert ArtifactKey.of("eval", {"method": "ties"}).digest != ArtifactKey.of("merged", {"method": "ties"}).digest


def test_unserializable_inputs_are_rejected():
    with pytest.raises(TypeError, match="cannot put object"):
        ArtifactKey.of("x", {"thing": object()})


def test_build_once_then_reuse(cache: ArtifactCache):
    key = ArtifactKey.of("demo", {"n": 1})
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "value.txt").write_text("42")

    first = cache.get_or_build(key, build, label="demo")
    second = cache.get_or_build(key, build, label="demo")
    assert len(calls) == 1
    assert not first.hit and second.hit
    assert first.path == second.path == cache.root / "demo" / key.digest
    assert (second.path / "value.txt").read_text() == "42"
    assert cache.read_meta(key)["inputs"] == {"n": 1}
    assert [e.hit for e in cache.events] == [False, True]


def test_a_failing_build_leaves_nothing_behind(cache: ArtifactCache):
    key = ArtifactKey.of("demo", {"n": 2})

    def build(out: Path) -> None:
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache.get_or_build(key, build)
    assert cache.lookup(key) is None
    assert not cache.path(key).exists()
    assert list((cache.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                                "message: \"No space left on device\" })")])
def test_a_full_disk_is_named_with_the_fix_and_leaves_nothing_behind(cache: ArtifactCache, error):
    key = ArtifactKey.of("merged", {"n": 3})

    def build(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise error

    with pytest.raises(CacheFullError, match=r"artifact cache .* is full \(.* GiB free once the half-written "
                                             r"ties merge was removed.*MERGEBENCH_CACHE") as raised:
        cache.get_or_build(key, build, label="ties merge")
    assert raised.value.__cause__ is error
    assert cache.lookup(key) is None and list((cache.root / "tmp").iterdir()) == []


def test_a_folder_without_meta_is_not_an_artifact(cache: ArtifactCache):
    key = ArtifactKey.of("demo", {"n": 3})
    cache.path(key).mkdir(parents=True)
    (cache.path(key) / "junk").write_text("left by a crash before atomic writes")
    artifact = cache.get_or_build(key, lambda out: (out / "ok").write_text("ok"))
    assert not artifact.hit
    assert sorted(p.name for p in artifact.path.iterdir()) == ["meta.json", "ok"]


def _build_in_process(root: str, counter: str) -> bool:
    cache = ArtifactCache(root)

    def build(out: Path) -> None:
        with open(counter, "a") as handle:
            handle.write("built\n")
        time.sleep(1.0)
        (out / "done").write_text("yes")

    return cache.get_or_build(ArtifactKey.of("shared", {"n": 1}), build).hit


def test_two_processes_build_an_artifact_once(tmp_path: Path):
    counter = tmp_path / "counter.txt"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        hits = pool.starmap(_build_in_process, [(str(tmp_path / "cache"), str(counter))] * 2)
    assert counter.read_text().splitlines() == ["built"]
    assert sorted(hits) == [False, True]
