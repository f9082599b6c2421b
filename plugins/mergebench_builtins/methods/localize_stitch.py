"""Localize-and-Stitch: train a sparse binary mask per expert on its data, stitch the masked regions.

He et al., "Localize-and-Stitch: Efficient Model Merging via Sparse Task Arithmetic", TMLR 2025.
https://arxiv.org/abs/2408.13656

Localization trains mask logits S_i so that θ_pre + σ(S_i) ⊙ τ_i fits expert i's samples,
starting from its top ``density`` magnitudes, with the official defaults the study used
(sigmoid bias 3, learning rate 1e8, one epoch, no L1); the binary mask is σ(S_i) > 1/2 and is a
cached artifact (:func:`mergebench.merging.statistics.train_ls_mask`). Stitching is the same as
the dataless variant: θ_pre + Σ_i m_i τ_i / max(1, Σ_i m_i).
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.merging.tensors import task_vectors
from mergebench_builtins.methods.dataless_localize_stitch import stitch
from mergebench_builtins.methods.statistic_method import StatisticMethod


class LocalizeStitch(StatisticMethod):
    statistic = "ls_mask"
    statistic_keys = ("samples", "density", "sigmoid_bias", "lr", "epochs", "l1")

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        masks = self.statistics_of(name, base.device)
        if masks is None:
            return base
        return base + stitch(zip(task_vectors(experts, base), masks))
