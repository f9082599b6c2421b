"""What each stage asks the cluster for: CPUs, a GPU, and memory sized from the model.

Finetuning, statistics, the search and evaluation run the model forward (and backward), so they
take a GPU wherever the cluster has one (``--mb-device auto``) and must have one when the run
asks for CUDA or a CUDA-only backend (vLLM). Merging streams tensors on CPU cores; its memory is
sized from the checkpoint, which the driver knows only by the model's declared size (``3B``,
``135M``): the merge engine reads experts one tensor at a time in float32, and on the embedded
135M model with five experts it peaked at 1.35 times the float32 checkpoint (README, "Speed and
memory against mergekit"). Every process also pays for Python and torch. The figures are
scheduling requests, not limits: Ray and Slurm place by them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

GIB = 1 << 30
PROCESS_BYTES = 1 * GIB
"""Python, torch and transformers in one worker, before any weights."""

FLOAT32_COPIES = {
    "base": 3.0,        # a builder dequantizes a GGUF and saves it (the embedded bases); a hub base is only resolved
    "train": 4.0,       # weights, gradients and AdamW's two moments on the CPU when there is no GPU
    "statistics": 3.0,  # the expert, its gradients or activations, the accumulated statistic
    "search": 3.0,      # the base, the merged task vectors and the model being scored
    "merge": 1.5,       # measured 1.35x on the embedded model (five experts, streamed)
    "evaluate": 1.5,    # the model and its activations
    "case": 0.0,        # reads cached results only
}
GPU_KINDS = frozenset({"train", "statistics", "search", "evaluate"})
"""Stages that run the model and so use a GPU where the cluster has one."""

_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMBT])\s*$", re.IGNORECASE)
_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


@dataclass(frozen=True)
class Request:
    """One stage's request: CPU cores, GPUs and bytes of memory."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int = PROCESS_BYTES

    def describe(self) -> str:
        gpu = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.cpus:g} CPU{gpu}, {self.memory / GIB:.1f} GiB"


def parameter_count(size: str) -> int:
    """``"9B"`` → 9e9, ``"135M"`` → 135e6; a size that names no count (``"tiny"``) → 0."""
    match = _SIZE.match(size or "")
    return int(float(match["number"]) * _UNITS[match["unit"].lower()]) if match else 0


def gpu_required(kind: str, device: str, backend: str) -> bool:
    """Whether ``kind`` cannot run without a GPU: CUDA was asked for, or the backend is CUDA-only."""
    if kind not in GPU_KINDS:
        return False
    return device.strip().lower().startswith("cuda") or (kind == "evaluate" and backend == "vllm")


def request_for(kind: str, model_size: str, *, use_gpu: bool) -> Request:
    """The request of a ``kind`` stage on a model of ``model_size``; ``use_gpu`` when the cluster has GPUs for it."""
    weights = parameter_count(model_size) * 4  # float32 bytes
    copies = FLOAT32_COPIES.get(kind, 1.0)
    on_gpu = use_gpu and kind in GPU_KINDS
    host_copies = min(copies, 1.5) if on_gpu else copies  # on a GPU the host holds the weights while loading them
    return Request(cpus=1.0, gpus=1.0 if on_gpu else 0.0, memory=int(PROCESS_BYTES + host_copies * weights))


def machine_memory() -> int:
    """This machine's physical memory in bytes (0 where the platform does not say): what a local executor can offer."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 0
