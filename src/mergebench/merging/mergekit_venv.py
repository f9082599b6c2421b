"""mergekit 0.1.5 in a virtualenv of its own, found or built once, for the tests and benchmarks that compare with it.

mergekit pins versions that clash with ours, so it never shares our environment. One way to
find it serves ``tests/test_mergekit_agreement.py`` and ``benchmarks/perf/merge_perf.py``:

1. ``MERGEBENCH_MERGEKIT=/path/to/bin/mergekit-yaml``, an installation you made;
2. else the venv under ``$MERGEBENCH_TOOLS`` (default ``~/.cache/mergebench-tools``)
   ``/mergekit-0.1.5``, built on first use: ``python3 -m venv``, then ``pip install
   torch==2.13.0`` first (so that pip does not pull a CUDA build of torch for mergekit), then
   ``pip install mergekit==0.1.5``, under a file lock (two processes build it once) and marked
   complete last (a killed build is built anew, never used).

When the package index cannot be reached (``pip download mergekit==0.1.5`` fails), building
raises :class:`MergekitUnavailable` with pip's reason, which tests turn into a skip; any other
failure is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSION = "0.1.5"
TORCH = "torch==2.13.0"
ENV = "MERGEBENCH_MERGEKIT"
COMPLETE = ".complete"


class MergekitUnavailable(Exception):
    """mergekit cannot be had here (no index to install it from); the message says why."""


def tools_dir() -> Path:
    return Path(os.environ.get("MERGEBENCH_TOOLS") or Path.home() / ".cache" / "mergebench-tools")


def venv_dir() -> Path:
    return tools_dir() / f"mergekit-{VERSION}"


def mergekit_yaml(*, build: bool = True) -> Path:
    """The ``mergekit-yaml`` to compare with: ``$MERGEBENCH_MERGEKIT``, else our venv (built when ``build``)."""
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            raise FileNotFoundError(f"{ENV}={given} is not a file; point it at a mergekit {VERSION} venv's bin/mergekit-yaml")
        return path
    target = venv_dir()
    if not (target / COMPLETE).is_file():
        if not build:
            raise MergekitUnavailable(f"no mergekit venv at {target} (set {ENV}, or let the tests build it)")
        build_venv(target)
    return target / "bin" / "mergekit-yaml"


def build_venv(target: Path) -> float:
    """Build mergekit's venv at ``target`` unless another process did; return the seconds it took.

    Built in place (a venv records its folder in its scripts) under a file lock; the ``.complete``
    marker is written last, so a folder without it is a killed build's and is built anew."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).is_file():
            return 0.0
        _check_index()
        shutil.rmtree(target, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(target)], "creating the venv")
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _run([*pip, TORCH], f"installing {TORCH}")
        _run([*pip, f"mergekit=={VERSION}"], f"installing mergekit=={VERSION}")
        seconds = time.perf_counter() - started
        (target / COMPLETE).write_text(json.dumps({"mergekit": VERSION, "torch": TORCH, "build_seconds": round(seconds, 1)}))
    return seconds


def _check_index() -> None:
    """Raise MergekitUnavailable when pip cannot reach the package index (the one reason to skip)."""
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                               "-q", "-d", scratch, f"mergekit=={VERSION}"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MergekitUnavailable(f"pip cannot download mergekit=={VERSION} (package index unreachable?): {last}")


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building mergekit's venv failed while {what}:\n{done.stderr[-3000:]}")


DRIVER = """
import json, sys, time, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
seconds = {}
for config_file, out_path in json.loads(sys.argv[1]):
    text = open(config_file, encoding="utf-8").read()
    started = time.perf_counter()
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), out_path, options=MergeOptions(quiet=True),
              config_source=text)
    seconds[config_file] = time.perf_counter() - started
print(json.dumps(seconds))
"""


def run_configs(mergekit: Path, jobs: list[tuple[Path, Path]]) -> dict[str, float]:
    """Run each (config, output folder) as ``mergekit-yaml CONFIG OUT`` does, in one process of mergekit's
    venv (one start-up of torch and transformers for all); return each config's seconds."""
    python = mergekit.parent / "python"
    done = subprocess.run([str(python), "-c", DRIVER, json.dumps([[str(c), str(o)] for c, o in jobs])],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"mergekit failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
