"""Weight matrices prepacked for MKL's sgemm at the batch's row count: the decode step's products.

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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PACK_LIMIT_BYTES = 4 << 30
"""Largest allocation for one model's packed weights (a 135M-parameter model's is 2.0 GB, bounded by 2.6)."""


def packed_allocation(weights) -> int:
    """An upper bound of what torch allocates for packed copies of these float32 matrices."""
    return sum((8 << 20) + 3 * w.numel() * w.element_size() for w in weights)


def can_pack(weight: "torch.Tensor") -> bool:
    """Whether MKL's packed sgemm can serve this weight (float32 on the CPU, in a torch built with MKL)."""
    import torch

    return (weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2
            and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


class PackedMatrix:
    """``F.linear(x, weight)`` for inputs of up to ``rows`` rows, through a prepacked weight when possible."""

    def __init__(self, weight: "torch.Tensor", rows: int, *, pack: bool = True) -> None:
        import torch

        self.weight, self.rows = weight, rows
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows) if pack and can_pack(weight) else None

    @property
    def packed_bytes(self) -> int:
        return 0 if self.packed is None else self.packed.numel() * self.packed.element_size()

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        flat = x.reshape(-1, x.shape[-1])
        used = flat.shape[0]
        if self.packed is None or used > self.rows:
            return F.linear(x, self.weight)
        if used < self.rows:
            flat = torch.cat([flat, flat.new_zeros(self.rows - used, flat.shape[1])])
        out = torch.ops.mkl._mkl_linear(flat, self.packed, self.weight, None, self.rows)
        return out[:used].view(*x.shape[:-1], self.weight.shape[0])
