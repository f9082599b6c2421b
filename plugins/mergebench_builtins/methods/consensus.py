"""Consensus Task Arithmetic: keep the multi-task vector only where at least k tasks need it.

Wang et al., "Localizing Task Information for Improved Model Merging and Compression", ICML 2024.
https://arxiv.org/abs/2405.07813

τ_MTL = Σ_i τ_i; task masks (TALL masks) m_i = [|τ_i| ≥ λ_i · |τ_MTL − τ_i|]; consensus mask
m = [Σ_i m_i ≥ k]; θ = θ_pre + λ · m ⊙ τ_MTL. λ_i is ``mask_lambda``, or task i's own value in
``mask_lambdas`` (``math=0.3,coding=0.5``): the paper tunes each task's λ_i, then λ (its Table 7:
35 runs), which the search does as the method's declared plan (:class:`~mergebench.specs.SearchPlan`).
``isolate=DOMAIN`` gives the model that plan scores for one task, TALL masks' retrieval
θ_pre + m_DOMAIN ⊙ τ_MTL.

The study's released code hard-codes λ_i = 0.2 for every task (``consensus.py:30``; its ``--lamda``
is never read) and compares with a strict ``>`` (``consensus.py:33``): ``mask_compare=gt``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergebench.errors import UsageError
from mergebench.merging.api import MergeMethod
from mergebench.merging.tensors import summed, task_vectors


def parse_lambdas(text: str, domains: Sequence[str]) -> dict[str, float]:
    """``"math=0.3,coding=0.5"`` → ``{"math": 0.3, "coding": 0.5}``; a UsageError names what is wrong."""
    found: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        domain, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None or not 0 <= number <= 100:
            raise UsageError(f"mask_lambdas item {item!r} must look like DOMAIN=VALUE with 0 ≤ VALUE ≤ 100, "
                             "e.g. mask_lambdas=math=0.3,coding=0.5")
        if domain.strip() not in domains:
            raise UsageError(f"mask_lambdas names {domain.strip()!r}, which is no expert of this merge; "
                             f"experts: {', '.join(domains) or 'none'}")
        found[domain.strip()] = number
    return found


class Consensus(MergeMethod):
    scales_delta = True

    def __init__(self, params, context) -> None:
        super().__init__(params, context)
        domains = tuple(context.domains)
        own = parse_lambdas(self.params.get("mask_lambdas", ""), domains)
        self.lambdas = [own.get(d, self.params["mask_lambda"]) for d in domains] if domains else []
        self.isolate = self.params.get("isolate", "")
        if self.isolate and self.isolate not in domains:
            raise UsageError(f"isolate={self.isolate!r} is no expert of this merge; experts: {', '.join(domains) or 'none'}")

    def mask(self, delta: torch.Tensor, rest: torch.Tensor, index: int) -> torch.Tensor:
        """Task ``index``'s TALL mask from its task vector and τ_MTL − τ_i."""
        lam = self.lambdas[index] if index < len(self.lambdas) else self.params["mask_lambda"]
        if self.params.get("mask_compare", "ge") == "gt":
            return delta.abs() > lam * rest.abs()
        return delta.abs() >= lam * rest.abs()

    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        multi = summed(deltas)
        if self.isolate:
            index = list(self.context.domains).index(self.isolate)
            return multi * self.mask(deltas[index], multi - deltas[index], index)
        votes = torch.zeros_like(multi)
        for index, delta in enumerate(deltas):
            votes += self.mask(delta, multi - delta, index)
        return multi * (votes >= self.params["k"])
