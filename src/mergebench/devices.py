"""Which device a stage runs on. The one place that asks torch about GPUs."""

from __future__ import annotations

import os

from mergebench.errors import UsageError

GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
"""What a visible NVIDIA, ROCm or WSL GPU exposes: without any of them ``auto`` is the CPU without importing torch."""


def resolve_device(requested: str | None) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; an explicit ``cuda`` without a GPU is an error."""
    requested = (requested or "auto").strip().lower()
    if requested == "cpu" or (requested == "auto" and not any(map(os.path.exists, GPU_DEVICE_NODES))):
        return "cpu"
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--mb-device {requested} was asked for but no CUDA GPU is visible; use --mb-device cpu")
        return requested
    raise UsageError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or auto")
