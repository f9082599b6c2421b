"""Fisher Merging: average the experts weighted entry by entry by their diagonal Fisher information.

Matena and Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022.
https://arxiv.org/abs/2111.09832

θ = Σ_i F_i θ_i / Σ_i F_i, equivalently θ_pre + Σ_i F_i τ_i / Σ_i F_i, with F_i the diagonal
empirical Fisher of expert i: the mean squared gradient of its loss over ``samples`` training
samples (the study uses 1,000), one backward pass per sample. Entries where every Fisher is zero
get the plain mean. The Fisher of each expert is computed here and cached as an artifact by the
harness (:mod:`mergebench.merging.statistics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mergebench import progress
from mergebench.merging.statistics import StatisticJob, encode, load_model, save_statistic
from mergebench.merging.tensors import averaged, summed, task_vectors
from mergebench.specs import DataNeed
from mergebench_builtins.methods.statistic_method import StatisticMethod


def fisher_average(deltas: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor]) -> torch.Tensor:
    weighted = summed((fisher * delta for delta, fisher in zip(deltas, fishers)), owned=True)
    total = summed(fishers)
    return torch.where(total > 0, weighted / total.clamp(min=torch.finfo(total.dtype).tiny), averaged(deltas))


class Fisher(StatisticMethod):
    statistic = "fisher"
    statistic_needs = (DataNeed.GRADIENTS,)

    @classmethod
    def compute_statistic(cls, job: StatisticJob, out_dir: Path) -> None:
        """Diagonal empirical Fisher: the mean over samples of the squared gradient of each sample's
        completion loss, for every merged parameter."""
        model, tokenizer = load_model(job.expert_dir, job.device)
        wanted = {n: p for n, p in model.named_parameters() if job.merged(n)}
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in wanted)
        fisher = {n: torch.zeros_like(p) for n, p in wanted.items()}
        with progress.progress("fisher", total=len(job.samples), unit="samples") as bar:
            for sample in job.samples:
                ids, labels = encode(tokenizer, sample)
                model.zero_grad(set_to_none=True)
                model(input_ids=ids.to(job.device), labels=labels.to(job.device)).loss.backward()
                for name, parameter in wanted.items():
                    if parameter.grad is not None:
                        fisher[name].addcmul_(parameter.grad, parameter.grad)
                bar.advance()
        save_statistic({n: f / len(job.samples) for n, f in fisher.items()}, out_dir, "fisher")

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        fishers = self.statistics_of(name, base.device)
        return base + (averaged(deltas, owned=True) if fishers is None else fisher_average(deltas, fishers))
