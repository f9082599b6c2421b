"""Per-tensor building blocks of the sparsifying merge methods, as plain functions on float32 tensors.

Each takes a task vector τ (one tensor of one expert) and returns the sparsified τ; thresholds
come from :mod:`mergebench.merging.topk`, randomness from :func:`generator_for`, so a random
method's output depends only on (seed, tensor name, expert index) — not on the order or thread
in which tensors are merged.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def generator_for(seed: int, name: str, index: int, salt: str = "") -> "torch.Generator":
    """A CPU generator seeded by (seed, tensor name, expert index, salt): reproducible per tensor."""
    import torch

    digest = hashlib.sha256(f"{seed}\0{name}\0{index}\0{salt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def keep_above(tau: "torch.Tensor", threshold: float) -> "torch.Tensor":
    """τ where |τ| ≥ threshold, 0 elsewhere (the magnitude mask of TIES and Dataless L&S), **in place**.

    Sparsifiers receive a fresh task vector of their own, so they may reuse its memory; this one
    does. It is one ``hardshrink`` pass (zero where ``|τ| ≤ λ``) with λ the float just below the
    threshold, so ``|τ| ≥ threshold`` is kept exactly; a boolean mask costs several passes more.
    Dropped entries become +0, NaN/Inf stay.
    """
    import torch

    if threshold == 0.0:
        return tau
    if tau.dtype != torch.float32:  # λ below is a float32 neighbour: other dtypes take the mask
        return tau.masked_fill_((tau < threshold) & (tau > -threshold), 0)
    below = float(torch.nextafter(torch.tensor(threshold, dtype=torch.float32), torch.tensor(0.0)))
    return torch.ops.aten.hardshrink.out(tau, below, out=tau)


def keep_between(tau: "torch.Tensor", low: float, high: float) -> "torch.Tensor":
    """τ where low ≤ |τ| < high (Breadcrumbs: drop the smallest and the largest outliers)."""
    magnitude = tau.abs()
    return tau * ((magnitude >= low) & (magnitude < high))


def outlier_ranks(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """Ranks (1-based, from the largest) bounding Breadcrumbs' kept band, as mergekit counts them.

    ``n_top = int(gamma·n)`` largest entries are dropped, then ``int(density·n)`` are kept (the
    outlier cut shrinks when both would not fit). Returns (rank of the largest dropped outlier
    band's last element, rank of the last kept element); 0 means "no upper cut".
    """
    target = int(density * numel)
    top = int(gamma * numel)
    bottom = max(0, numel - target - top)
    top = numel - target - bottom  # what the outlier cut really removes
    return top, top + target


def dare(tau: "torch.Tensor", p: float, generator: "torch.Generator") -> "torch.Tensor":
    """Drop each entry with probability p and rescale the rest by 1/(1−p) (Yu et al. 2024)."""
    import torch

    if p <= 0:
        return tau
    keep = torch.rand(tau.shape, generator=generator).to(tau.device) >= p  # drawn on the CPU: same mask on any device
    return tau * keep / (1.0 - p)


def magprune(tau: "torch.Tensor", density: float, epsilon: float, generator: "torch.Generator",
             *, rescale: bool = True) -> "torch.Tensor":
    """DELLA's MAGPRUNE: keep probabilities rise linearly with magnitude rank within each row.

    Ranks are normalized to [0, 1] per row (a 1-D tensor is one row); entry i is kept with
    probability ``density − ε + 2ε·rank_i`` and, kept, rescaled by the inverse of that
    probability so its expectation is unchanged (Deep et al. 2024, Sec. 3). ``density`` 1 keeps all.
    ``rescale=False`` keeps the kept entries as they are (mergekit rescales afterwards, by the L1 norm).
    """
    import torch

    if density >= 1:
        return tau
    rows = tau.reshape(1, -1) if tau.dim() < 2 else tau.reshape(tau.shape[0], -1)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32)
    width = rows.shape[1] - 1
    rank_norm = ranks / width if width > 0 else torch.zeros_like(ranks)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    keep = torch.rand(rows.shape, generator=generator).to(rows.device) < probs
    return (rows * keep / probs if rescale else rows * keep).reshape(tau.shape)
