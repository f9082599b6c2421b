"""Iso-C and Iso-CTS: isotropic merging — flatten the singular spectrum of the merged task matrix.

Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
Subspaces", ICML 2025. https://arxiv.org/abs/2502.04959

Iso-C: for every 2-D matrix, M = Σ_i τ_i = U S Vᵀ and the update is σ̄ U Vᵀ with σ̄ the mean
singular value. Iso-CTS: the top singular directions of M (a ``common_fraction`` of the rank)
are kept as the common subspace; each task contributes the top directions of its task vector
projected off that subspace (an equal share of the remaining rank); the union of directions is
orthogonalized (polar factor) and given the mean singular value of the concatenated spectrum.
Other tensors get the mean task vector, as the official code. Both are scaled by λ.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.api import MergeMethod
from mergebench.merging.tensors import averaged, summed, task_vectors
from mergebench_builtins.methods.tsv import polar, svd


def iso_c(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    u, s, vt = svd(summed(deltas))
    return s.mean() * (u @ vt)


def iso_cts(deltas: Sequence[torch.Tensor], common_fraction: float) -> torch.Tensor:
    n = len(deltas)
    rank = min(deltas[0].shape)
    common = int(rank * common_fraction)
    task_total = round((rank - common) / n) * n  # the task-specific share divides evenly among tasks
    common = rank - task_total
    per_task = task_total // n
    u, s, vt = svd(summed(deltas))
    common_u, common_s, common_vt = u[:, :common], s[:common], vt[:common]
    us, ss, vts = [], [], []
    if per_task:
        for delta in deltas:
            specific = delta - common_u @ (common_u.T @ delta)
            tu, ts, tvt = svd(specific)
            us.append(tu[:, :per_task])
            ss.append(ts[:per_task])
            vts.append(tvt[:per_task])
    u_all = torch.cat([*us, common_u], dim=1)
    s_all = torch.cat([*ss, common_s])
    vt_all = torch.cat([*vts, common_vt], dim=0)
    return s_all.mean() * (polar(u_all) @ polar(vt_all))


class IsoC(MergeMethod):
    scales_delta = True

    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        return iso_c(deltas) if base.dim() == 2 else averaged(deltas, owned=True)


class IsoCTS(MergeMethod):
    scales_delta = True

    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        return iso_cts(deltas, self.params["common_fraction"]) if base.dim() == 2 else averaged(deltas, owned=True)
