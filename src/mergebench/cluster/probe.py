"""Before any work: does every node see the driver's cache, and can it run this run?

Stages hand artifacts to each other through the cache, so a node with a cache of its own would
build its own experts, and the driver would wait for artifacts it never sees. The driver writes a
probe file into ``<cache>/cluster/probes/``; a task on each node must read it and write one back,
which the driver must then read. Either miss stops the run with :func:`check_reports`'s error,
before anything is scheduled. The same task reports the node's mergebench and Python versions
and whether the run's models, methods and tasks are registered there (a node without a plugin
would fail every case it touches), and which of the run's methods are data-aware (asking imports
the method classes, and so torch, which the driver need not have).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from mergebench.errors import UsageError

SHARED_STORAGE_FIX = ("Every node must see the same cache: put --mb-cache-dir on storage that all nodes mount at the same "
                      "path (NFS, Lustre, GPFS), or run without --mb-executor")


def probe_dir(cache_root: Path | str) -> Path:
    return Path(cache_root) / "cluster" / "probes"


def write_driver_probe(cache_root: Path, nonce: str) -> Path:
    from mergebench import __version__

    folder = probe_dir(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{nonce}.driver"
    path.write_text(json.dumps({"nonce": nonce, "host": platform.node(), "mergebench_version": __version__}))
    return path


def _read_json(path: Path, wait_seconds: float) -> dict[str, Any] | None:
    """The JSON in ``path``, waiting up to ``wait_seconds`` for a network filesystem to show it."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)


def node_probe(cache_root: str, nonce: str, names: Mapping[str, list[str]], wait_seconds: float = 10.0) -> dict[str, Any]:
    """Runs on a node: read the driver's probe, write this node's, and report what the node can run."""
    from mergebench import __version__, plugin_manager

    host, pid = platform.node(), os.getpid()
    report: dict[str, Any] = {"host": host, "pid": pid, "mergebench_version": __version__,
                              "python": platform.python_version(), "sees_driver": False, "missing": {}, "statistics": []}
    driver = _read_json(probe_dir(cache_root) / f"{nonce}.driver", wait_seconds)
    if driver is None or driver.get("nonce") != nonce:
        return report
    report["sees_driver"] = True
    registries = plugin_manager.registries()
    tables = {"models": registries.models, "methods": registries.methods, "tasks": registries.tasks}
    report["missing"] = {kind: [n for n in names.get(kind, []) if n not in tables[kind]] for kind in tables}
    report["statistics"] = [m for m in names.get("methods", []) if m in registries.methods
                            and getattr(registries.methods.get(m).load(), "statistic", None)]
    path = probe_dir(cache_root) / f"{nonce}.{host}-{pid}.node"
    path.write_text(json.dumps(report))
    return report


def check_reports(cache_root: Path, nonce: str, reports: Iterable[Mapping[str, Any]], *, where: str,
                  wait_seconds: float = 10.0) -> None:
    """Raise a :class:`UsageError` naming the fix unless every node and the driver saw each other's probe,
    and every node runs this mergebench with the run's plugins."""
    from mergebench import __version__

    for report in reports:
        node = f"{where} node {report['host']}"
        if not report["sees_driver"]:
            raise UsageError(f"the artifact cache {cache_root} is not shared with {node}: a probe file the driver wrote "
                             f"there ({probe_dir(cache_root) / (nonce + '.driver')}) did not appear on that node. "
                             + SHARED_STORAGE_FIX)
        written = probe_dir(cache_root) / f"{nonce}.{report['host']}-{report['pid']}.node"
        if _read_json(written, wait_seconds) is None:
            raise UsageError(f"the artifact cache {cache_root} is not shared with {node}: the probe file that node "
                             f"wrote ({written}) does not appear here. " + SHARED_STORAGE_FIX)
        if report["mergebench_version"] != __version__:
            raise UsageError(f"{node} runs mergebench {report['mergebench_version']}, the driver {__version__}; "
                             "install the same mergebench on every node")
        missing = [f"{kind[:-1]} {name!r}" for kind, names in report["missing"].items() for name in names]
        if missing:
            raise UsageError(f"{node} does not know {', '.join(missing)}: install the same mergebench plugins on every "
                             "node as on the driver")


def remove_probes(cache_root: Path, nonce: str) -> None:
    folder = probe_dir(cache_root)
    for path in folder.glob(f"{nonce}.*"):
        try:
            path.unlink()
        except OSError:
            pass
    with_nothing_left = folder.is_dir() and not any(folder.iterdir())
    if with_nothing_left:
        shutil.rmtree(folder, ignore_errors=True)
