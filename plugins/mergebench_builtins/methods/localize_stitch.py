"""Localize-and-Stitch: train a sparse binary mask per expert on its data, stitch the masked regions.

He et al., "Localize-and-Stitch: Efficient Model Merging via Sparse Task Arithmetic", TMLR 2025.
https://arxiv.org/abs/2408.13656

Localization trains mask logits S_i so that θ_pre + σ(S_i) ⊙ τ_i fits expert i's samples,
starting from its top ``density`` magnitudes, with the official defaults the study used
(sigmoid bias 3, learning rate 1e8, one epoch, no L1); the binary mask is σ(S_i) > 1/2
(:meth:`LocalizeStitch.compute_statistic`), cached per expert by the harness. Stitching is the
same as the dataless variant: θ_pre + Σ_i m_i τ_i / max(1, Σ_i m_i).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mergebench import progress
from mergebench.checkpoint import CheckpointReader
from mergebench.merging.statistics import StatisticJob, encode, load_model, save_statistic
from mergebench.merging.tensors import task_vectors
from mergebench.merging.topk import MagnitudeSelector, topk_count
from mergebench_builtins.methods.dataless_localize_stitch import stitch
from mergebench_builtins.methods.statistic_method import StatisticMethod


class LocalizeStitch(StatisticMethod):
    statistic = "ls_mask"
    statistic_keys = ("samples", "density", "sigmoid_bias", "lr", "epochs", "l1")
    statistic_relative_to_base = True  # trained on θ_pre + σ(S) ⊙ τ

    @classmethod
    def compute_statistic(cls, job: StatisticJob, out_dir: Path) -> None:
        """Localization (He et al. 2025, Algorithm 1), on the CPU or GPU.

        Mask logits S start at ±``sigmoid_bias`` on the top ``density`` entries of |τ| (over the whole
        model); the model θ_pre + σ(S) ⊙ τ is trained on the samples for ``epochs`` by SGD on S with
        learning rate ``lr`` and an L1 penalty ``l1`` on σ(S); the mask is σ(S) > 1/2.
        """
        params, device = job.params, job.device
        model, tokenizer = load_model(job.base_dir, device)
        expert = CheckpointReader(job.expert_dir)
        wanted = {n: p for n, p in model.named_parameters() if job.merged(n)}
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in wanted)
        pre = {n: p.detach().clone() for n, p in wanted.items()}
        tau = {n: expert.get(n).to(device, torch.float32) - pre[n] for n in wanted}
        selector = MagnitudeSelector([topk_count(sum(t.numel() for t in tau.values()), params["density"])])
        for t in tau.values():
            selector.add(t)
        for t in tau.values():
            selector.refine(t)
        threshold = selector.thresholds()[0]
        bias = params["sigmoid_bias"]
        logits = {n: torch.where(t.abs() >= threshold, bias, -bias).to(torch.float32) for n, t in tau.items()}
        steps = params["epochs"] * len(job.samples)
        with progress.progress("localize", total=steps, unit="steps") as bar:
            for _ in range(params["epochs"]):
                for sample in job.samples:
                    with torch.no_grad():
                        for n, parameter in wanted.items():
                            parameter.copy_(pre[n] + torch.sigmoid(logits[n]) * tau[n])
                    ids, labels = encode(tokenizer, sample)
                    model.zero_grad(set_to_none=True)
                    model(input_ids=ids.to(device), labels=labels.to(device)).loss.backward()
                    with torch.no_grad():
                        for n, parameter in wanted.items():
                            sig = torch.sigmoid(logits[n])
                            slope = sig * (1 - sig)
                            grad = slope * params["l1"]
                            if parameter.grad is not None:
                                grad = grad + parameter.grad * tau[n] * slope
                            logits[n] -= params["lr"] * grad
                    bar.advance()
        save_statistic({n: (s > 0).to(torch.uint8) for n, s in logits.items()}, out_dir, "ls_mask")

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        masks = self.statistics_of(name, base.device)
        if masks is None:
            return base
        return base + stitch(zip(task_vectors(experts, base), masks))
