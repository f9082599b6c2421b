"""Model Soup: the element-wise mean of the finetuned models.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022. https://arxiv.org/abs/2203.05482

The paper averages whole models, embeddings and ``lm_head`` included (``embeddings=averaged``).
The study runs its soup as Task Arithmetic with λ = 1/n (``scripts/merge.sh:2``, λ = 0.2 for five
experts), whose task vectors leave the embeddings and an untied head at the base's values
(``embeddings=base``: θ_pre + Σ_i τ_i / n on the other tensors).
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.api import MergeMethod
from mergebench.merging.tensors import averaged, summed, task_vectors


class Soup(MergeMethod):
    # A soup averages whole models, embeddings included: it has no task vectors to restrict.
    uses_task_vectors = False

    def merges(self, name: str) -> bool:
        if self.params.get("embeddings", "averaged") == "base":
            return not any(p.search(name) for p in self._exclude)
        return True

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.params.get("embeddings", "averaged") == "base":
            return base + summed(task_vectors(experts, base), owned=True) * (1.0 / len(experts))
        return averaged(experts)  # a running sum: one expert in float32 at a time
