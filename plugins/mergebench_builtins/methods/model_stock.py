"""Model Stock: move from the base towards the experts' average by a factor set by their angle.

Jang, Yun and Han, "Model Stock: All we need is just a few fine-tuned models", ECCV 2024.
https://arxiv.org/abs/2403.19522

Per tensor, with cos θ the mean pairwise cosine between the experts' task vectors (flattened),
t = N cos θ / (1 + (N − 1) cos θ) and θ_merged = t · mean_i θ_i + (1 − t) · θ_pre. With two
experts this is the paper's formula; for more, averaging the pairwise cosines is mergekit's
choice, which we follow. Where 1 + (N−1) cos θ vanishes the base is kept (t = 0), as mergekit.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.api import MergeMethod
from mergebench.merging.tensors import averaged, task_vectors


def interpolation_ratio(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    flat = [d.reshape(-1) for d in deltas]
    cosines = []
    for i, a in enumerate(flat):
        for b in flat[i + 1:]:
            norms = (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)).clamp(min=1e-6)
            cosines.append(((a * b).sum() / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean()
    n = len(flat)
    denominator = 1 + (n - 1) * cos
    return torch.zeros_like(cos) if denominator.abs() < 1e-6 else n * cos / denominator


class ModelStock(MergeMethod):
    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        t = interpolation_ratio(list(task_vectors(experts, base)))
        return t * averaged(experts) + (1 - t) * base
