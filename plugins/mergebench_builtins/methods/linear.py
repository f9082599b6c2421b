"""Linear: a weighted average of whole models, one weight per expert (mergekit's ``linear``).

θ = Σ_i w_i θ_i / Σ_i w_i, or Σ_i w_i θ_i with ``normalize=false``. With equal weights it is
Model Soup. Like the soup it averages every tensor, embeddings included: it has no base to keep.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.errors import UsageError
from mergebench.merging.api import MergeMethod
from mergebench_builtins.methods.per_expert import per_expert


class Linear(MergeMethod):
    uses_task_vectors = False

    def __init__(self, params, context) -> None:
        super().__init__(params, context)
        self.weights = per_expert(self.params, "weights", context.domains, 1.0)
        if self.params["normalize"] and abs(sum(self.weights)) < 1e-8:
            raise UsageError(f"linear with normalize divides by the sum of the weights, which is 0 "
                             f"({self.params['weights']}); change a weight or set normalize=false")

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros_like(base)
        for weight, expert in zip(self.weights, experts):  # one expert in float32 at a time
            total.add_(expert, alpha=weight)
        return total.div_(sum(self.weights)) if self.params["normalize"] else total
