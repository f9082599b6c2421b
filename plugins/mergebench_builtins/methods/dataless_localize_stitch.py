"""Dataless Localize-and-Stitch: localize each task in its top-k task-vector entries, stitch the regions.

He et al., "Localize-and-Stitch: Efficient Model Merging via Sparse Task Arithmetic", TMLR 2025.
https://arxiv.org/abs/2408.13656

Without data, expert i's region is the mask m_i of its top ``density`` magnitudes (over the whole
model by default, as the official code; ``scope=tensor`` per tensor). Stitching adds each
region back onto the base, averaging where regions overlap:
θ = θ_pre + Σ_i m_i τ_i / max(1, Σ_i m_i). No scaling coefficient is tuned.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from mergebench.merging.tensors import task_vectors
from mergebench_builtins.methods.gta import TopKSparsified


def stitch(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ_i m_i τ_i / Σ_i m_i over (τ_i, m_i) pairs where any mask is on, 0 elsewhere (the stitch of L&S)."""
    total = count = None
    for delta, mask in pairs:
        if total is None:
            total, count = torch.zeros_like(delta), torch.zeros_like(delta)
        total += delta * mask
        count += mask
    return total / count.clamp_(min=1)


class DatalessLocalizeStitch(TopKSparsified):
    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        def pairs():
            for index, tau in enumerate(task_vectors(experts, base)):
                yield tau, self.sparsify(name, index, tau) != 0  # trims tau in place: tau·mask is unchanged

        return stitch(pairs())
