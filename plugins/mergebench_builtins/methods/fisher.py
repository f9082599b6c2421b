"""Fisher Merging: average the experts weighted entry by entry by their diagonal Fisher information.

Matena and Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022.
https://arxiv.org/abs/2111.09832

θ = Σ_i F_i θ_i / Σ_i F_i, equivalently θ_pre + Σ_i F_i τ_i / Σ_i F_i, with F_i the diagonal
empirical Fisher of expert i: the mean squared gradient of its loss over ``samples`` training
samples (the study uses 1,000), one backward pass per sample. Entries where every Fisher is zero
get the plain mean. The Fisher of each expert is computed here and cached as an artifact by the
harness (:mod:`mergebench.merging.statistics`).

The study's released code computes another statistic (``statistic=last_token_argmax``): a "hard"
Fisher of the **last** position only, labelled with the model's own argmax there
(``fisher_utils.py:27-32``), squared once per optimizer step of a DeepSpeed Trainer on 4 GPUs
(``scripts/merge.sh:11``), so each square is of the gradient averaged over 4 samples (``group=4``),
while that Trainer keeps updating the weights (AdamW, 1e-5, cosine: ``taskloader.py:60-74``). Here the
weights stay the expert's: that trajectory is not reproduced. It adds 1e-10 to every Fisher before
averaging (``fisher.py:189``; ``floor``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from mergebench import progress
from mergebench.merging.statistics import StatisticJob, encode, load_model, save_statistic
from mergebench.merging.tensors import averaged, summed, task_vectors
from mergebench.specs import DataNeed
from mergebench_builtins.methods.statistic_method import StatisticMethod


def fisher_average(deltas: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor]) -> torch.Tensor:
    weighted = summed((fisher * delta for delta, fisher in zip(deltas, fishers)), owned=True)
    total = summed(fishers)
    return torch.where(total > 0, weighted / total.clamp(min=torch.finfo(total.dtype).tiny), averaged(deltas))


def sample_loss(model, tokenizer, sample, statistic: str, device: str) -> torch.Tensor:
    """The loss whose gradient is squared: the completion's loss on its gold tokens (``empirical``), or
    the study's hard Fisher, −log p(argmax) at the sample's last position (``last_token_argmax``)."""
    ids, labels = encode(tokenizer, sample)
    if statistic == "empirical":
        return model(input_ids=ids.to(device), labels=labels.to(device)).loss
    logits = model(input_ids=ids.to(device)).logits[:, -1, :]
    return F.cross_entropy(logits, logits.argmax(dim=-1))


class Fisher(StatisticMethod):
    statistic = "fisher"
    statistic_needs = (DataNeed.GRADIENTS,)
    statistic_keys = ("samples", "statistic", "group")

    @classmethod
    def statistic_params(cls, params):
        found = super().statistic_params(params)
        # at their defaults they stay out of the key: Fisher statistics cached before they existed keep theirs
        if found.get("statistic") == "empirical":
            del found["statistic"]
        if found.get("group") == 1:
            del found["group"]
        return found

    @classmethod
    def compute_statistic(cls, job: StatisticJob, out_dir: Path) -> None:
        """Diagonal Fisher: the mean over steps of the squared gradient of a step's loss (one sample a
        step, or the mean loss of ``group`` samples), for every merged parameter."""
        statistic, group = job.params.get("statistic", "empirical"), int(job.params.get("group", 1))
        model, tokenizer = load_model(job.expert_dir, job.device)
        wanted = {n: p for n, p in model.named_parameters() if job.merged(n)}
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in wanted)
        fisher = {n: torch.zeros_like(p) for n, p in wanted.items()}
        steps = 0
        with progress.progress("fisher", total=len(job.samples), unit="samples") as bar:
            for start in range(0, len(job.samples), group):
                chunk = job.samples[start:start + group]
                model.zero_grad(set_to_none=True)
                for sample in chunk:
                    (sample_loss(model, tokenizer, sample, statistic, job.device) / len(chunk)).backward()
                    bar.advance()
                for name, parameter in wanted.items():
                    if parameter.grad is not None:
                        fisher[name].addcmul_(parameter.grad, parameter.grad)
                steps += 1
        save_statistic({n: f / steps for n, f in fisher.items()}, out_dir, "fisher")

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        fishers = self.statistics_of(name, base.device)
        if fishers is None:
            return base + averaged(deltas, owned=True)
        floor = self.params.get("floor", 0.0)
        if floor:
            fishers = [f + floor for f in fishers]
        return base + fisher_average(deltas, fishers)
