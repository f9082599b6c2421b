"""RegMean: merge linear layers so the merged layer best reproduces every expert's outputs on its inputs.

Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023.
https://arxiv.org/abs/2212.09849

For a linear layer with weight W (out × in, as torch stores it) and Gram matrices G_i = X_iᵀX_i
of its inputs on expert i's samples, W = (Σ_i W_i G̃_i)(Σ_i G̃_i)⁻¹, where G̃_i = α G_i + (1 − α)
diag(G_i) shrinks the off-diagonal entries by α (``alpha``, the study's "reduction", tuned over
{0.1, 0.3, 0.5, 0.7, 0.9}). Written on task vectors: θ_pre + (Σ_i τ_i G̃_i)(Σ_i G̃_i)⁻¹. Other
parameters (norms) are averaged. Grams are averaged over tokens, so experts weigh equally
whatever the length of their samples; they are cached per expert and read layer by layer.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.tensors import averaged, summed, task_vectors
from mergebench_builtins.methods.statistic_method import StatisticMethod


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """α G + (1 − α) diag(G)."""
    return alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))


def regmean_delta(deltas: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    shrunk = [shrink(g.double(), alpha) for g in grams]
    lhs = summed(shrunk)  # a copy: rhs reads shrunk[0] again
    rhs = summed((d.double() @ g for d, g in zip(deltas, shrunk)), owned=True)  # (out × in)
    solution, info = torch.linalg.solve_ex(lhs, rhs.T)  # lhs is symmetric: X lhs = rhs ⇔ lhs Xᵀ = rhsᵀ
    if int(info) != 0:  # singular (an input never seen): least squares
        solution = torch.linalg.pinv(lhs) @ rhs.T
    return solution.T.to(deltas[0].dtype)


class RegMean(StatisticMethod):
    statistic = "gram"

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        grams = self.statistics_of(name, base.device) if base.dim() == 2 else None
        if grams is None:
            return base + averaged(deltas, owned=True)
        return base + regmean_delta(deltas, grams, self.params["alpha"])
