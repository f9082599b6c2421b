"""One GPU per pytest-xdist worker.

* ``pytest -n auto`` on a benchmark run starts one worker per visible GPU.
* The controller hands its GPU list to every worker (``workerinput``); worker ``gwN`` sets
  ``CUDA_VISIBLE_DEVICES`` to GPU ``N mod count`` in ``pytest_configure`` — before anything
  imports torch, which collection never does — so each worker sees exactly one GPU.

GPU discovery never imports torch: ``MERGEBENCH_FAKE_GPUS`` (tests), else
``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``. How workers' progress reaches the
controller's terminal is :mod:`mergebench.pytest_progress`'s business.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from mergebench.pytest_plugin import is_worker, selection_given


def visible_gpus() -> list[str]:
    fake = os.environ.get("MERGEBENCH_FAKE_GPUS")
    if fake is not None:
        return [g.strip() for g in fake.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU ")]


def worker_index(worker_id: str) -> int:
    """``gw3`` → 3."""
    digits = "".join(c for c in worker_id if c.isdigit())
    return int(digits) if digits else 0


def gpu_for_worker(worker_id: str, gpus: list[str]) -> str | None:
    return gpus[worker_index(worker_id) % len(gpus)] if gpus else None


def pytest_configure(config: pytest.Config) -> None:
    if is_worker(config):
        _configure_worker(config)


def _configure_worker(config: pytest.Config) -> None:
    """Give this xdist worker its own GPU and its share of the CPU cores (before torch loads)."""
    gpus = config.workerinput.get("mb_gpus") or []
    worker_id = config.workerinput.get("workerid", "gw0")
    workers = int(config.workerinput.get("workercount", 1) or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    if gpus and config.getoption("mb_device") in ("auto", "cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for_worker(worker_id, gpus) or ""


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller hook: pass the GPUs to a new worker."""
    node.workerinput["mb_gpus"] = visible_gpus()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` on a benchmark run: one worker per visible GPU (None lets xdist count CPUs)."""
    runs_benchmarks = any("benchmark" in str(arg) for arg in config.args) or selection_given(config)
    gpus = visible_gpus() if runs_benchmarks and config.getoption("mb_device") != "cpu" else []
    return len(gpus) or None
