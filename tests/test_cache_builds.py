"""The cache's builds log: one line per completed build, none for a reuse or a failed build."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mergebench.cache import ArtifactCache, ArtifactKey
from mergebench.cache.builds import BUILDS_FILE, read_builds


def test_a_completed_build_is_recorded_once_with_its_host_and_pid(cache: ArtifactCache):
    key = ArtifactKey.of("demo", {"n": 1})
    cache.get_or_build(key, lambda out: (out / "x.txt").write_text("1"), label="demo one")
    cache.get_or_build(key, lambda out: (out / "x.txt").write_text("1"), label="demo one")  # a hit: no line
    [entry] = list(read_builds(cache.root))
    assert (entry["stage"], entry["digest"], entry["label"]) == ("demo", key.digest, "demo one")
    assert (entry["host"], entry["pid"]) == (socket.gethostname(), os.getpid())
    assert entry["seconds"] >= 0 and entry["finished"].endswith("Z")
    assert "demo" in cache.stages() and BUILDS_FILE not in cache.stages()


def test_a_failed_build_records_nothing(cache: ArtifactCache):
    def fail(out: Path) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_build(ArtifactKey.of("demo", {"n": 2}), fail)
    assert list(read_builds(cache.root)) == []


def test_lines_that_do_not_parse_are_skipped(tmp_path: Path):
    (tmp_path / BUILDS_FILE).write_text('{"stage": "merged", "digest": "a"}\nnot json\n[1]\n{"stage": "eval", "digest": "b"}\n')
    assert [e["digest"] for e in read_builds(tmp_path)] == ["a", "b"]
    assert list(read_builds(tmp_path / "missing")) == []
