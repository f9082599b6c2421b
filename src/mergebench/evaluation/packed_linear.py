"""Linear layers on weights packed once for MKL, while a generation runs on the CPU.

Why: a decode step multiplies a few rows (one per sequence) by every weight matrix. For so few
rows MKL's ``sgemm`` repacks the weight matrix on every call, which costs more than the
multiplication itself; ``cblas_sgemm_pack`` does it once (torch exposes it as
``torch.ops.mkl._mkl_reorder_linear_weight`` / ``_mkl_linear``, what inductor uses for frozen
linears), and the packed matrix serves any number of rows. The results are float32 products of
the same weights; only the order of the sums inside a dot product may differ, as it does
between batch sizes.

The packed copies are made when a generation starts and dropped when it ends: weights may be
changed in place between calls (the search writes each merge into the model), and packing
costs about as much as a few dozen decode steps. Packing is skipped where it cannot help or
would not fit: no MKL in this torch, weights that are not float32 on the CPU, or packed copies
that would take more than a quarter of the memory the system has available.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

PACK_SHARE_OF_AVAILABLE_MEMORY = 0.25
"""Pack only if the packed copies (about twice the weights, measured) fit in this share of MemAvailable."""


def packable(model) -> list:
    """The plain ``nn.Linear`` layers of ``model`` whose weights MKL can pack (float32, CPU).

    A layer whose ``forward`` was already replaced on the instance (a test's or a user's patch)
    keeps it.
    """
    import torch

    if not hasattr(torch.ops.mkl, "_mkl_linear") or not torch.backends.mkl.is_available():
        return []
    return [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__
            and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu" and m.weight.dim() == 2]


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def packed_linears(model, rows_hint: int = 16) -> Iterator[bool]:
    """Within the block, ``model``'s linear layers multiply by packed weights; yields whether they do.

    Forward hooks still run (the layer is called as before; only its ``forward`` is replaced on
    the instance), so the search's shared decoding sees the same outputs it would compute itself.
    """
    import torch

    layers = packable(model)
    needed = 2 * sum(m.weight.numel() * 4 for m in layers)
    available = _available_bytes()
    if not layers or available is None or needed > PACK_SHARE_OF_AVAILABLE_MEMORY * available:
        yield False
        return
    with torch.no_grad():
        packed = [torch.ops.mkl._mkl_reorder_linear_weight(m.weight.detach().contiguous(), rows_hint) for m in layers]
    try:
        for module, weight in zip(layers, packed):
            module.forward = _packed_forward(module, weight)
        yield True
    finally:
        for module in layers:
            module.__dict__.pop("forward", None)


def _packed_forward(module, packed):
    import torch

    weight, bias = module.weight, module.bias
    linear = torch.ops.mkl._mkl_linear

    def forward(x):
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = linear(flat, packed, weight, bias, flat.shape[0])
        return out.view(*x.shape[:-1], out.shape[-1])

    return forward
