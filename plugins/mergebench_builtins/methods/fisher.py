"""Fisher Merging: average the experts weighted entry by entry by their diagonal Fisher information.

Matena and Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022.
https://arxiv.org/abs/2111.09832

θ = Σ_i F_i θ_i / Σ_i F_i, equivalently θ_pre + Σ_i F_i τ_i / Σ_i F_i, with F_i the diagonal
empirical Fisher of expert i: the mean squared gradient of its loss over ``samples`` training
samples (the study uses 1,000). Entries where every Fisher is zero get the plain mean. The
Fisher of each expert is a cached artifact (:mod:`mergebench.merging.statistics`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.tensors import averaged, summed, task_vectors
from mergebench_builtins.methods.statistic_method import StatisticMethod


def fisher_average(deltas: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor]) -> torch.Tensor:
    weighted = summed((fisher * delta for delta, fisher in zip(deltas, fishers)), owned=True)
    total = summed(fishers)
    return torch.where(total > 0, weighted / total.clamp(min=torch.finfo(total.dtype).tiny), averaged(deltas))


class Fisher(StatisticMethod):
    statistic = "fisher"

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        fishers = self.statistics_of(name, base.device)
        return base + (averaged(deltas, owned=True) if fishers is None else fisher_average(deltas, fishers))
