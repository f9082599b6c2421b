"""Which BLAS multiplies: the decode step's weights prepacked for MKL's sgemm, or numpy's BLAS on CPUs MKL
serves poorly (there also for the log-likelihood forward and finetuning, :class:`numpy_linears`).

Why: a decoding step multiplies a few rows (one per prompt of the batch) by every weight
matrix, and at that shape an ordinary ``F.linear`` spends much of its time rearranging the
weight into the layout its kernel reads. MKL can do that rearrangement once
(``cblas_sgemm_pack``, which torch exposes as ``torch.ops.mkl._mkl_reorder_linear_weight``, the
op inductor's weight freezing uses), and the step then reuses it for every token. A packed
product serves exactly the row count it was packed for; rows that left the batch are filled
with zeros (each output row depends on its own input row only), and anything larger falls back
to ``F.linear``. Where MKL or float32 weights on the CPU are missing, every product is ``F.linear``.

Packed copies cost memory: torch allocates about 8 MB plus two to three times the matrix's
bytes for one (more than MKL fills: a 135M-parameter model's resident memory grows by 1.3 GB,
the concatenated copies included), so a model whose packed copies could be allocated beyond
``PACK_LIMIT_BYTES`` is not packed.

On CPUs other than Intel's, MKL (the BLAS torch's CPU wheels carry) runs these products far from
the machine's rate, so :func:`blas` picks numpy's BLAS there (OpenBLAS in numpy's wheels), which
multiplies by a transposed copy of each weight at any row count. Measured on an AVX2-only AMD EPYC,
2 threads, the 135M model's products of one decode step at 16 rows: 133 ms MKL-packed, 120 ms
``F.linear``, 63 ms numpy (README, speed table). The sums run in another order, so a product
differs from ``F.linear``'s in the last bits (~1e-6 relative), as MKL's own kernels differ from
one CPU to the next.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from mergebench.errors import UsageError

if TYPE_CHECKING:
    import torch

BLAS_VARIABLE = "MERGEBENCH_DECODE_BLAS"
"""``mkl``, ``numpy`` or ``auto`` (the default: MKL on Intel CPUs, numpy's BLAS elsewhere)."""

BLAS_CHOICES = ("auto", "mkl", "numpy")

PACK_LIMIT_BYTES = 4 << 30
"""Largest allocation for one model's packed weights (a 135M-parameter model's is 2.0 GB, bounded by 2.6)."""


def packed_allocation(weights) -> int:
    """An upper bound of what torch allocates for packed copies of these float32 matrices."""
    return sum((8 << 20) + 3 * w.numel() * w.element_size() for w in weights)


def numpy_ready(weight: "torch.Tensor") -> bool:
    """Whether numpy's BLAS can serve this weight (float32 on the CPU)."""
    import torch

    return weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2


def can_pack(weight: "torch.Tensor") -> bool:
    """Whether MKL's packed sgemm can serve this weight (float32 on the CPU, in a torch built with MKL)."""
    import torch

    return (numpy_ready(weight) and torch.backends.mkl.is_available()
            and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


@lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...), or ``""`` where Linux does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def blas() -> str:
    """Which library multiplies the decode step's float32 products: ``mkl`` or ``numpy`` (see the module's docstring)."""
    choice = os.environ.get(BLAS_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in BLAS_CHOICES:
        raise UsageError(f"{BLAS_VARIABLE}={choice!r} is not a choice; set it to one of {', '.join(BLAS_CHOICES)}")
    if choice == "auto":
        return "mkl" if cpu_vendor() in ("GenuineIntel", "") else "numpy"
    return choice


_blas_threads_set: int | None = None
"""The count :func:`blas_threads` last gave numpy's BLAS (each generate call asks; only a change is applied)."""


def blas_threads(threads: int) -> None:
    """Run numpy's BLAS on ``threads`` threads (torch's count), where threadpoolctl can set it."""
    global _blas_threads_set
    if threads == _blas_threads_set:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy's BLAS keeps its own count (every core)
        return
    threadpool_limits(limits=threads, user_api="blas")
    _blas_threads_set = threads


class PackedMatrix:
    """``F.linear(x, weight)`` for inputs of up to ``rows`` rows, through a prepacked weight when possible.

    With ``library="numpy"`` the product runs in numpy's BLAS on a transposed copy, at any row count.
    """

    def __init__(self, weight: "torch.Tensor", rows: int, *, pack: bool = True, library: str = "mkl") -> None:
        import torch

        self.weight, self.rows = weight, rows
        self.transposed = None
        self.packed = None
        if pack and library == "numpy" and numpy_ready(weight):
            import numpy as np

            self.transposed = np.ascontiguousarray(weight.detach().numpy().T)
        elif pack and can_pack(weight):
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)

    @property
    def packed_bytes(self) -> int:
        if self.transposed is not None:
            return self.transposed.nbytes
        return 0 if self.packed is None else self.packed.numel() * self.packed.element_size()

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        if self.transposed is not None and x.dtype == torch.float32:
            return _numpy_rows_times(x, self.transposed)
        flat = x.reshape(-1, x.shape[-1])
        used = flat.shape[0]
        if self.packed is None or used > self.rows:
            return F.linear(x, self.weight)
        if used < self.rows:
            flat = torch.cat([flat, flat.new_zeros(self.rows - used, flat.shape[1])])
        out = torch.ops.mkl._mkl_linear(flat, self.packed, self.weight, None, self.rows)
        return out[:used].view(*x.shape[:-1], self.weight.shape[0])


def _numpy_mm(a: "torch.Tensor", b) -> "torch.Tensor":
    """``a @ b`` for a float32 CPU matrix and a float32 tensor or numpy matrix (transposed views welcome), in numpy's BLAS."""
    import numpy as np
    import torch

    out = torch.empty(a.shape[0], b.shape[1])
    np.matmul(a.numpy(), b if isinstance(b, np.ndarray) else b.numpy(), out=out.numpy())
    return out


def _numpy_rows_times(x: "torch.Tensor", matrix) -> "torch.Tensor":
    """``x @ matrix`` over ``x``'s last dimension, its leading dimensions kept (``matrix``: a weight's transpose)."""
    flat = x.detach().reshape(-1, x.shape[-1]).contiguous()
    return _numpy_mm(flat, matrix).view(*x.shape[:-1], matrix.shape[1])


@lru_cache(maxsize=1)
def _numpy_product():
    """``x @ weight.T`` as an autograd function whose three products (forward, input and weight
    gradients) run in numpy's BLAS (built on first use: torch is imported lazily)."""
    import torch

    class NumpyProduct(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight):
            ctx.save_for_backward(x, weight)
            return _numpy_rows_times(x, weight.detach().t())

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            flat_grad = grad.reshape(-1, grad.shape[-1]).contiguous()
            grad_x = grad_weight = None
            if ctx.needs_input_grad[0]:
                grad_x = _numpy_mm(flat_grad, weight.detach()).view(*grad.shape[:-1], weight.shape[1])
            if ctx.needs_input_grad[1]:
                flat_x = x.detach().reshape(-1, x.shape[-1]).contiguous()
                grad_weight = _numpy_mm(flat_grad.t(), flat_x)
            return grad_x, grad_weight

    return NumpyProduct


def _numpy_linear(x: "torch.Tensor", module) -> "torch.Tensor":
    import torch

    weight, bias = module.weight, module.bias
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        return torch.nn.functional.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out = _numpy_product().apply(x, weight)
    else:
        out = _numpy_rows_times(x, weight.detach().t())
    return out if bias is None else out + bias


class numpy_linears:
    """Within ``with numpy_linears(model):`` every float32 CPU ``nn.Linear`` of ``model`` multiplies
    through numpy's BLAS when :func:`blas` says ``numpy``; elsewhere it changes nothing.

    Why: MKL serves CPUs other than Intel's poorly. On the 2-core AMD EPYC, the log-likelihood
    tasks' forward passes (packed rows of up to 512 tokens) gained ~4% at two threads, and a
    training step of the mini recipes' shape at one thread (as under ``--mb-executor processes``)
    1.18x (22.0 s against 25.9 s; README, "Cold-run time"). numpy reads each weight through a
    transposed view, so nothing is copied; with autograd on, the input and weight gradients are
    numpy products too. The sums run in another order, so results differ from torch's in the
    last bits, as MKL's own do from one CPU or thread count to the next.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.patched: list = []

    def __enter__(self) -> "numpy_linears":
        import functools

        import torch

        if blas() != "numpy":
            return self
        blas_threads(torch.get_num_threads())
        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear) and numpy_ready(module.weight) and "forward" not in vars(module):
                module.forward = functools.partial(_numpy_linear, module=module)
                self.patched.append(module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.patched:
            del module.forward
        self.patched.clear()
