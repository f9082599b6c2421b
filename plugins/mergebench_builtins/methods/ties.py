"""TIES-Merging: trim to the top-k magnitudes, elect a sign per entry, average the agreeing entries.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023.
https://arxiv.org/abs/2306.01708

θ = θ_pre + λ · Σ_i [sign(τ̂_i) = γ] τ̂_i / Σ_i [sign(τ̂_i) = γ], with τ̂_i = τ_i trimmed to its top
``density`` magnitudes and γ = sign(Σ_i τ̂_i). ``scope=global`` trims over the whole model (the
paper's and the study's choice); ``scope=tensor`` trims each tensor (mergekit's ``ties``).

The study's released code differs in four places, each a hyperparameter here so that its
``study-code`` form is a set of values (docs/fidelity.md): it sums the agreeing entries instead of
averaging them (``merge_func=sum``: ``prepare_args.py:14``, ``ties_merging_utils.py:116-117``),
keeps ⌊d·K⌋+1 entries per expert (``topk=floor_plus_one``: its ``kthvalue`` of the ``K − ⌊d·K⌋``-th
smallest, ``ties_merging_utils.py:69-75``), gives an entry whose trimmed sum is 0 the sign of the
whole model's majority (``zero_sign=majority``: ``ties_merging_utils.py:83-96``; a majority of 0
keeps the negative entries, as its ``disjoint_merge`` does) and counts an untied ``lm_head`` in the
global threshold and the majority without merging it (``lm_head_in_threshold``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergebench.merging.api import TensorInputs
from mergebench.merging.plain import PlainForm
from mergebench.merging.tensors import task_vectors
from mergebench_builtins.methods.gta import MagnitudeSparsified, TopKSparsified
from mergebench_builtins.methods.study_code import with_untied_head

if TYPE_CHECKING:
    import torch


class Ties(TopKSparsified):
    consensus = True

    @property
    def normalize(self) -> bool:  # type: ignore[override]
        return self.params.get("merge_func", "mean") == "mean"

    def ranks(self, numel: int) -> list[int]:
        if self.params.get("topk", "floor") == "floor_plus_one" and not self.is_identity():
            return [min(numel, int(self.params["density"] * numel) + 1)]
        return super().ranks(numel)

    def plain_form(self) -> PlainForm | None:
        """TIES as the paper defines it with a threshold per tensor: merged without torch (mergebench.merging.plain).

        The global scope's thresholds and the study code's variants stay with the torch engine."""
        p = self.params
        if type(self) is not Ties or p.get("scope") != "tensor" or p.get("lm_head_in_threshold") or not self.normalize \
                or p.get("topk", "floor") != "floor" or p.get("zero_sign", "positive") != "positive" \
                or not 0 < p["density"]:
            return None
        return PlainForm(scaling=p.get("scaling", 1.0), density=None if self.is_identity() else p["density"], consensus=True)

    def prepare(self, inputs: TensorInputs) -> None:
        Ties.prepare_all([self], inputs)

    @classmethod
    def prepare_all(cls, methods, inputs: TensorInputs) -> None:
        MagnitudeSparsified._prepare_thresholds(methods, inputs)
        voting = [m for m in methods if m.params.get("zero_sign", "positive") == "majority"]
        for method, count in zip(voting, _sign_counts(voting, inputs)):
            method._majority = count

    def elect(self, total: torch.Tensor) -> torch.Tensor:
        import torch

        if self.params.get("zero_sign", "positive") != "majority":
            return super().elect(total)
        elected = torch.sign(total)
        elected[total == 0] = 1.0 if getattr(self, "_majority", 0) > 0 else -1.0
        return elected


def _sign_counts(methods, inputs: TensorInputs) -> list[int]:
    """Per method, #(entries whose trimmed sum is > 0) − #(< 0) over the model: the sign of the study's majority.

    Over the same tensors as the method's thresholds (an untied head included with ``lm_head_in_threshold``)."""
    counts = []
    for method in methods:
        source = with_untied_head(inputs) if method.params.get("lm_head_in_threshold") else inputs

        def count(name, base, experts, method=method):
            import torch

            total = torch.zeros_like(base)
            for index, tau in enumerate(task_vectors(experts, base)):
                total.add_(method.sparsify(name, index, tau, {}))
            return int((total > 0).sum()) - int((total < 0).sum())

        counts.append(sum(source.map(count)))
    return counts
