"""Consensus Task Arithmetic: keep the multi-task vector only where at least k tasks need it.

Wang et al., "Localizing Task Information for Improved Model Merging and Compression", ICML 2024.
https://arxiv.org/abs/2405.07813

τ_MTL = Σ_i τ_i; task masks (TALL masks) m_i = [|τ_i| ≥ λ_c · |τ_MTL − τ_i|] with
λ_c = ``mask_lambda``; consensus mask m = [Σ_i m_i ≥ k]; θ = θ_pre + λ · m ⊙ τ_MTL. The study's
formula (its Appendix A) uses ≥; the study tunes λ_c over {0.2, …, 0.6} and λ over {0.1, …, 1}.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.api import MergeMethod
from mergebench.merging.tensors import summed, task_vectors


class Consensus(MergeMethod):
    scales_delta = True

    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        multi = summed(deltas)
        votes = torch.zeros_like(multi)
        for delta in deltas:
            votes += delta.abs() >= self.params["mask_lambda"] * (multi - delta).abs()
        return multi * (votes >= self.params["k"])
