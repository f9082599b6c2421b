"""mergekit's generalized task arithmetic, with its per-model weights, densities and rescaling.

mergekit's ``task_arithmetic``, ``ties``, ``dare_ties``, ``dare_linear``, ``breadcrumbs``,
``breadcrumbs_ties``, ``della`` and ``della_linear`` are one formula (mergekit 0.1.5,
``merge_methods/generalized_task_arithmetic.py`` and ``sparsify.py``), computed here per tensor::

    δ_i = w_i · sparsify(τ_i; density_i, gamma_i | epsilon_i), rescaled to τ_i's L1 norm if ``rescale``
    θ   = θ_pre + λ · Σ_i m_i δ_i / D

where m_i = 1 without ``consensus``, else [sign(δ_i) = γ] with γ the sign of Σ_i δ_i (``sum``, TIES'
election; + where it is 0) or of Σ_i sign(δ_i) (``count``); D = Σ_i m_i w_i with ``normalize``
(read as 1 where it is 0, or where |Σ_i w_i| < 1e-8 without consensus), else 1.

It exists so that a mergekit config runs on our engine with mergekit's meaning
(:mod:`mergebench.merging.mergekit_config`). Our own TIES, DARE, DELLA and Breadcrumbs keep
their papers' definitions (one λ and density for all experts, top-k over the whole model, DARE's
1/(1−p) and DELLA's 1/p rescaling), which mergekit's configurations approximate.

Sparsifiers, all per tensor as in mergekit: ``magnitude`` keeps the ``int(density·n)`` largest
|τ| (at least one); ``magnitude_outliers`` drops the ``int(gamma·n)`` largest first (Breadcrumbs);
``random`` keeps each entry with probability ``density`` (DARE); ``della_magprune`` keeps
entries with probabilities rising with their magnitude rank in each row (DELLA). A density of 1
or more leaves τ as it is, unrescaled, as mergekit does. Random masks come from a generator
seeded by (seed, tensor, expert), so they are reproducible here and differ from mergekit's draws.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.errors import UsageError
from mergebench.merging.api import MergeMethod
from mergebench.merging.sparsify import generator_for, keep_above, keep_between, magprune, outlier_ranks
from mergebench.merging.topk import kth_largest_abs, topk_count
from mergebench_builtins.methods.per_expert import per_expert

HOLD_ELEMENTS = 8 * 1024 * 1024
"""Up to this many entries (all experts together) a tensor's δ_i stay in memory; above it the
election streams the experts twice (sparsification is deterministic per tensor and expert)."""
RESCALE_EPS = 1e-7  # mergekit's: a norm below it leaves the masked tensor unscaled


class MergekitGTA(MergeMethod):
    scales_delta = True

    def __init__(self, params, context) -> None:
        super().__init__(params, context)
        labels = context.domains
        self.weights = per_expert(self.params, "weights", labels, 1.0)
        self.densities = per_expert(self.params, "densities", labels, 1.0)
        self.gammas = per_expert(self.params, "gammas", labels, 0.01)
        self.epsilons = per_expert(self.params, "epsilons", labels, 0.15)
        kind = self.params["sparsify"]
        for label, density, epsilon in zip(labels, self.densities, self.epsilons):
            if kind == "della_magprune" and 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
                raise UsageError(f"della_magprune needs density ± epsilon inside (0, 1) (keep probabilities); expert "
                                 f"{label!r} has density={density}, epsilon={epsilon}: lower its epsilon")

    # -- per expert -------------------------------------------------------------------------
    def delta(self, name: str, index: int, tau: torch.Tensor, memo: dict) -> torch.Tensor:
        """w_i · sparsify(τ_i), rescaled; ``tau`` is the caller's fresh tensor (modified in place)."""
        kind, density = self.params["sparsify"], self.densities[index]
        if kind != "none" and density < 1:
            norm = float(tau.abs().sum()) if self.params["rescale"] else 0.0
            tau = self._sparsified(kind, name, index, tau, density, memo)
            if self.params["rescale"]:
                kept = float(tau.abs().sum())
                if norm >= RESCALE_EPS and kept >= RESCALE_EPS:
                    tau.mul_(norm / kept)
        return tau.mul_(self.weights[index])

    def _sparsified(self, kind: str, name: str, index: int, tau: torch.Tensor, density: float, memo: dict):
        if density <= 0:
            return tau.zero_()
        if kind == "magnitude":
            if index not in memo:
                memo[index] = kth_largest_abs(tau, topk_count(tau.numel(), density))
            return keep_above(tau, memo[index])
        if kind == "magnitude_outliers":
            if index not in memo:
                top, last = outlier_ranks(tau.numel(), density, self.gammas[index])
                memo[index] = (kth_largest_abs(tau, last), kth_largest_abs(tau, top))
            low, high = memo[index]
            return keep_between(tau, low, high)
        generator = generator_for(self.context.seed, name, index, f"mergekit_{kind}")
        if kind == "random":
            return tau.mul_(torch.rand(tau.shape, generator=generator).to(tau.device) < density)
        return magprune(tau, density, self.epsilons[index], generator, rescale=False)

    def deltas(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor], memo: dict):
        from mergebench.merging.tensors import task_vectors

        for index, tau in enumerate(task_vectors(experts, base)):
            yield self.delta(name, index, tau, memo)

    # -- combined ---------------------------------------------------------------------------
    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        memo: dict = {}
        normalize = self.params["normalize"]
        if self.params["consensus"] == "none":
            total = torch.zeros_like(base)
            for delta in self.deltas(name, base, experts, memo):
                total.add_(delta)
            divisor = sum(self.weights)
            return total.div_(divisor) if normalize and abs(divisor) >= 1e-8 else total
        held = list(self.deltas(name, base, experts, memo)) if base.numel() * len(experts) <= HOLD_ELEMENTS else None
        votes = torch.zeros_like(base)
        for delta in held if held is not None else self.deltas(name, base, experts, memo):
            votes.add_(delta if self.params["consensus"] == "sum" else torch.sign(delta))
        elected = torch.where(votes >= 0, 1.0, -1.0)
        del votes
        total, divisor = torch.zeros_like(base), torch.zeros_like(base)
        for index, delta in enumerate(held if held is not None else self.deltas(name, base, experts, memo)):
            agrees = torch.sign(delta) == elected  # a zero entry has no sign: never agrees
            total.add_(delta.mul_(agrees))
            if normalize:
                divisor.add_(agrees, alpha=self.weights[index])
        if not normalize:
            return total
        return total.div_(divisor.masked_fill_(divisor == 0, 1.0))
