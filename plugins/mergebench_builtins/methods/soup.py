"""Model Soup: the element-wise mean of the finetuned models.

Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time", ICML 2022. https://arxiv.org/abs/2203.05482
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.api import MergeMethod
from mergebench.merging.tensors import averaged


class Soup(MergeMethod):
    # A soup averages whole models, embeddings included: it has no task vectors to restrict.
    uses_task_vectors = False

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        return averaged(experts)  # a running sum: one expert in float32 at a time
