"""Dataless Localize-and-Stitch: localize each task in its top-k task-vector entries, stitch the regions.

He et al., "Localize-and-Stitch: Efficient Model Merging via Sparse Task Arithmetic", TMLR 2025.
https://arxiv.org/abs/2408.13656

Without data, expert i's region is the mask m_i of its top ``density`` magnitudes (over the whole
model by default, as the official code; ``scope=tensor`` per tensor). Stitching adds each
region back onto the base, averaging where regions overlap:
θ = θ_pre + Σ_i m_i τ_i / max(1, Σ_i m_i). No scaling coefficient is tuned.

The study's released code has two bugs, each a hyperparameter here (its ``study-code`` form turns
both on; docs/fidelity.md measures them):

* ``drifting_base``: ``Localizer.interpolate_model`` adds each masked task vector into the shared
  base model in place (``localize_utils.py:74`` → ``utils.py:39``), so expert i's task vector and
  top-k are taken against B_i = B_{i−1} + m_{i−1} ⊙ (θ_{i−1} − B_{i−1}) (B_0 = θ_pre), and the stitch
  lands on the moved base: θ = B_n + Σ_i w_i (θ_i − B_n).
* ``overlap=last``: in ``Stitcher.get_average_masks`` the overlap count sits outside the loop over
  the other masks (``localize_utils.py:205-208``), so w_i = m_i / (1 + m_i m_j) with j the last
  other expert, instead of m_i / Σ_j m_j.

Both depend on the experts' order; ``expert_order=study`` takes the study's (instruction, math,
coding, safety, multilingual: ``main.py:6``), the pipeline's is the domains' order of the study's
tables.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from mergebench.merging.api import TensorInputs
from mergebench.merging.tensors import task_vectors
from mergebench.merging.topk import MagnitudeSelector, kth_largest_abs
from mergebench_builtins.methods.gta import MagnitudeSparsified, TopKSparsified
from mergebench_builtins.methods.study_code import with_untied_head


def stitch(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ_i m_i τ_i / Σ_i m_i over (τ_i, m_i) pairs where any mask is on, 0 elsewhere (the stitch of L&S)."""
    total = count = None
    for delta, mask in pairs:
        if total is None:
            total, count = torch.zeros_like(delta), torch.zeros_like(delta)
        total += delta * mask
        count += mask
    return total / count.clamp_(min=1)


def last_overlap_weights(masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The study's stitching weights: m_i / (1 + m_i m_j), j the last expert other than i (one expert: m_0)."""
    if len(masks) == 1:
        return [masks[0].float()]
    weights = []
    for i, mask in enumerate(masks):
        last = len(masks) - 1 if i != len(masks) - 1 else len(masks) - 2
        weights.append(mask.float() / (1 + (mask & masks[last]).float()))
    return weights


STUDY_ORDER = ("instruction", "math", "coding", "safety", "multilingual")
"""The order the study loads its experts in (``main.py:6``), the order its Localizer moves the base in."""


class DatalessLocalizeStitch(TopKSparsified):
    def prepare(self, inputs: TensorInputs) -> None:
        DatalessLocalizeStitch.prepare_all([self], inputs)

    @classmethod
    def prepare_all(cls, methods, inputs: TensorInputs) -> None:
        MagnitudeSparsified._prepare_thresholds([m for m in methods if not m.params.get("drifting_base")], inputs)
        for method in methods:
            if method.params.get("drifting_base"):
                method._prepare_drifting(inputs)

    def _prepare_drifting(self, inputs: TensorInputs) -> None:
        """Global thresholds expert after expert, each against the base the ones before it moved."""
        self._global = None
        if self.params.get("scope") != "global" or self.is_identity():
            return
        source = with_untied_head(inputs) if self.params.get("lm_head_in_threshold") else inputs
        found: list = [None] * len(self.context.domains)  # per expert index, filled in processing order
        for position, index in enumerate(self.order()):
            found[index] = self._threshold_against_moved_base(source, set(inputs.names()), found, index, position)
        self._global = found

    def order(self) -> list[int]:
        """The experts' indices in the order they move the base: as given, or the study's (``main.py:6``).

        Both bugs depend on it; the study loads instruction, math, coding, safety, multilingual.
        Experts of other names follow the study's five, in their given order."""
        domains = list(self.context.domains)
        if self.params.get("expert_order", "given") != "study":
            return list(range(len(domains)))
        rank = {d: i for i, d in enumerate(STUDY_ORDER)}
        return sorted(range(len(domains)), key=lambda i: (rank.get(domains[i], len(STUDY_ORDER)), i))

    def _threshold_against_moved_base(self, source: TensorInputs, merged: set[str], known: list, index: int,
                                      position: int) -> list[float]:
        """Expert ``index``'s global threshold of |θ_i − B_i|, given the thresholds of the experts before it."""
        known = list(known)

        def tau(name, base, experts):
            if name not in merged:  # the head is never written back: its base never moves
                return experts[index] - base
            return experts[index] - self._drifted(base, experts, known, position)[0]

        selector = MagnitudeSelector(self.ranks(sum(source.numel(n) for n in source.names())))
        for histogram in source.map(lambda n, b, e: MagnitudeSelector.histogram(tau(n, b, e))):
            selector.add_histogram(histogram)
        for low in source.map(lambda n, b, e: selector.low_histograms(tau(n, b, e))):
            selector.add_low_histograms(low)
        return selector.thresholds()

    def _drifted(self, base: torch.Tensor, experts: Sequence[torch.Tensor], thresholds: Sequence[Sequence[float]],
                 upto: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, masks): the base after the first ``upto`` experts of :meth:`order` moved it, and their masks."""
        moved = base.clone()
        masks = []
        for index in self.order()[:upto]:
            tau = experts[index] - moved
            mask = self._mask(tau, thresholds[index][0] if thresholds else None)
            moved += tau * mask
            masks.append(mask)
        return moved, masks

    def _mask(self, tau: torch.Tensor, threshold: float | None) -> torch.Tensor:
        """The study's mask: |τ| ≥ the threshold (this tensor's own when none is given), all of τ at density 1."""
        if self.is_identity():
            return torch.ones_like(tau, dtype=torch.bool)
        if threshold is None:
            threshold = kth_largest_abs(tau, self.ranks(tau.numel())[0])
        return tau.abs() >= threshold

    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        last = self.params.get("overlap", "all") == "last"
        order = self.order()
        if self.params.get("drifting_base"):
            moved, masks = self._drifted(base, experts, getattr(self, "_global", None) or [], len(experts))
            weights = last_overlap_weights(masks) if last else [m / torch.clamp(sum(x.float() for x in masks), min=1)
                                                                for m in masks]
            out = moved
            for index, weight in zip(order, weights):
                out = out + weight * (experts[index] - moved)
            return out - base
        if last:
            taus = list(task_vectors(experts, base))
            found = getattr(self, "_global", None) or [None] * len(taus)
            masks = [self._mask(taus[i], found[i][0] if found[i] else None) for i in order]
            return sum(w * taus[i] for w, i in zip(last_overlap_weights(masks), order))

        def pairs():
            for index, tau in enumerate(task_vectors(experts, base)):
                yield tau, self.sparsify(name, index, tau) != 0  # trims tau in place: tau·mask is unchanged

        return stitch(pairs())
