"""Saved runs: results JSON under ``.mergebench/``, named by machine, commit, date and tag.

``--mb-save TAG`` writes ``<machine>-<commit8>-<YYYYmmdd-HHMMSS>-<tag>.json`` with the results
and what produced them (options, mergebench version, the cache keys inside each case), so a
later run can compare against it (``--mb-compare``) and CI can gate on it.
"""

from __future__ import annotations

import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from mergebench.errors import UsageError
from mergebench.results import CaseResult, read_json, write_json

DEFAULT_ROOT = Path(".mergebench")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def git_commit(cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "nogit"


def machine_name() -> str:
    return _safe(platform.node() or "machine")


def run_name(tag: str, *, commit: str | None = None, when: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when if when is not None else time.time()))
    return f"{machine_name()}-{(commit or git_commit())[:8]}-{stamp}-{_safe(tag)}.json"


def save_run(results: Sequence[CaseResult], tag: str, *, root: Path = DEFAULT_ROOT,
             meta: Mapping[str, Any] | None = None, boot: Any = None) -> Path:
    commit = git_commit()
    meta = {"tag": tag, "commit": commit, "machine": machine_name(), "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **dict(meta or {})}
    return write_json(results, Path(root) / run_name(tag, commit=commit), meta=meta, boot=boot)


def _stamp(path: Path) -> str:
    found = re.search(r"-(\d{8}-\d{6})-", path.name)
    return found.group(1) if found else ""


def saved_runs(root: Path = DEFAULT_ROOT) -> list[Path]:
    """Saved runs, oldest first (by the timestamp in their names, then by name)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(root.glob("*.json"), key=lambda p: (_stamp(p), p.name))


def find_run(spec: str | None, root: Path = DEFAULT_ROOT) -> Path:
    """A saved run by path, by tag (the newest with that tag), or the newest of all when ``spec`` is empty."""
    runs = saved_runs(root)
    if spec:
        path = Path(spec)
        if path.is_file():
            return path
        tagged = [p for p in runs if p.stem.endswith(f"-{_safe(spec)}")]
        if tagged:
            return tagged[-1]
        raise UsageError(
            f"no saved run {spec!r} in {root} (saved: {', '.join(p.name for p in runs) or 'none'}); "
            "save one with --mb-save TAG, or give a results file path"
        )
    if not runs:
        raise UsageError(f"--mb-compare needs a saved run in {root}; save one first with --mb-save TAG")
    return runs[-1]


def load_run(spec: str | None, root: Path = DEFAULT_ROOT) -> tuple[Path, list[CaseResult]]:
    path = find_run(spec, root)
    return path, read_json(path)
