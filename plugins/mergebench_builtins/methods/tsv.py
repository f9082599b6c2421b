"""TSV-Merge: keep each task's top singular directions, decorrelate them across tasks, and sum.

Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025.
https://arxiv.org/abs/2412.00081

For every 2-D task-vector matrix, τ_i = U_i Σ_i V_iᵀ is truncated to its first ⌊r/n⌋ singular
triplets (r = min(shape), n experts); the truncated U's are concatenated, as are Σ's and V's;
U and V are replaced by their nearest orthogonal matrices (polar factor, from an SVD: P Qᵀ), and
the merged update is U_⊥ Σ V_⊥ᵀ. Other tensors (norms, biases) get the mean task vector, as the
official code. Scaled by λ (``scaling``, 1.0 in the paper).
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.api import MergeMethod
from mergebench.merging.tensors import averaged, task_vectors


def svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD that survives LAPACK's convergence failures.

    On real experts, float32 ``gesdd`` fails on some stacked bases (ill-conditioned, repeated
    singular values: "linalg.svd: The algorithm failed to converge"). Retry in float64, which
    converged on every tensor of the embedded model's experts, and return float32 factors.
    """
    try:
        return torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        u, s, vt = torch.linalg.svd(matrix.double(), full_matrices=False)
        return u.to(matrix.dtype), s.to(matrix.dtype), vt.to(matrix.dtype)


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal matrix nearest to ``matrix`` (P Qᵀ from its SVD P S Qᵀ)."""
    p, _, qt = svd(matrix)
    return p @ qt


def task_singular_merge(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    rows, cols = deltas[0].shape
    per_task = min(rows, cols) // len(deltas)
    if per_task == 0:
        return averaged(deltas)
    us, ss, vts = [], [], []
    for delta in deltas:
        u, s, vt = svd(delta)
        us.append(u[:, :per_task])
        ss.append(s[:per_task])
        vts.append(vt[:per_task])
    u, s, vt = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vts, dim=0)
    return polar(u) @ torch.diag(s) @ polar(vt)


class TaskSingularVectors(MergeMethod):
    scales_delta = True

    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        return task_singular_merge(deltas) if base.dim() == 2 else averaged(deltas, owned=True)
