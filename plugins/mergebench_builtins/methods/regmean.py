"""RegMean: merge linear layers so the merged layer best reproduces every expert's outputs on its inputs.

Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023.
https://arxiv.org/abs/2212.09849

For a linear layer with weight W (out × in, as torch stores it) and Gram matrices G_i = X_iᵀX_i
of its inputs on expert i's samples, W = (Σ_i W_i G̃_i)(Σ_i G̃_i)⁻¹, where G̃_i = α G_i + (1 − α)
diag(G_i) shrinks the off-diagonal entries by α (``alpha``, the study's "reduction", tuned over
{0.1, 0.3, 0.5, 0.7, 0.9}). Written on task vectors: θ_pre + (Σ_i τ_i G̃_i)(Σ_i G̃_i)⁻¹. Other
parameters (norms) are averaged. Grams are averaged over tokens, so experts weigh equally
whatever the length of their samples; they are computed here from forward hooks, cached per
expert by the harness (:mod:`mergebench.merging.statistics`) and read layer by layer.

``solver=study`` solves as the study's released code does (``regmean.py:80-88``): on the weights,
not the task vectors, with ``torch.inverse`` in float32, or ``pinv`` when Σ G̃ has a condition
number above 1e8 or a zero diagonal entry. Where an input is dead (a zero row and column of every
Gram) its pinv gives that weight column 0, where ours keeps the base's column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mergebench import progress
from mergebench.merging.statistics import StatisticJob, encode, load_model, save_statistic
from mergebench.merging.tensors import averaged, summed, task_vectors
from mergebench_builtins.methods.statistic_method import StatisticMethod


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """α G + (1 − α) diag(G)."""
    return alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))


def regmean_delta(deltas: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    shrunk = [shrink(g.double(), alpha) for g in grams]
    lhs = summed(shrunk)  # a copy: rhs reads shrunk[0] again
    rhs = summed((d.double() @ g for d, g in zip(deltas, shrunk)), owned=True)  # (out × in)
    solution, info = torch.linalg.solve_ex(lhs, rhs.T)  # lhs is symmetric: X lhs = rhs ⇔ lhs Xᵀ = rhsᵀ
    if int(info) != 0:  # singular (an input never seen): least squares
        solution = torch.linalg.pinv(lhs) @ rhs.T
    return solution.T.to(deltas[0].dtype)


def study_weight(weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """W = ((Σ G̃_i)⁻¹ Σ G̃_i W_iᵀ)ᵀ in float32, pinv when ill-conditioned, as ``regmean.py:66-88``."""
    shrunk = [shrink(g.float(), alpha) for g in grams]
    lhs = summed(shrunk)
    rhs = summed((g @ w.float().T for w, g in zip(weights, shrunk)), owned=True)  # (in × out)
    if torch.linalg.cond(lhs) > 1e8 or bool((torch.diagonal(lhs) == 0).any()):
        inverse = torch.linalg.pinv(lhs)
    else:
        inverse = torch.inverse(lhs)
    return (inverse @ rhs).T


class RegMean(StatisticMethod):
    statistic = "gram"

    @classmethod
    def compute_statistic(cls, job: StatisticJob, out_dir: Path) -> None:
        """The Gram matrix XᵀX of the inputs of every merged ``nn.Linear`` (keyed by its weight's
        name), averaged over the tokens seen.

        Layers that read the same input tensor (q/k/v, gate/up) share one product per sample, and
        when the LM head is not merged (the default) the forward pass stops before it: its logits
        were a ninth of the work and nothing read them.
        """
        model, tokenizer = load_model(job.expert_dir, job.device)
        grams: dict[str, torch.Tensor] = {}
        tokens: dict[str, int] = {}
        sample_products: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # id(input) → (input, XᵀX, rows)
        handles, hooked = [], []
        for module_name, module in model.named_modules():
            weight_name = f"{module_name}.weight"
            if isinstance(module, torch.nn.Linear) and job.merged(weight_name):
                def hook(_module, inputs, _output, key=weight_name):
                    found = sample_products.get(id(inputs[0]))
                    if found is None:  # the input stays referenced, so its id is not reused during this pass
                        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
                        found = sample_products[id(inputs[0])] = (inputs[0], x.T @ x, x.shape[0])
                    _, product, rows = found
                    grams[key] = grams[key].add_(product) if key in grams else product.clone()
                    tokens[key] = tokens.get(key, 0) + rows
                handles.append(module.register_forward_hook(hook))
                hooked.append(module_name)
        backbone = getattr(model, model.base_model_prefix, None)
        inside = backbone is not None and all(name.startswith(f"{model.base_model_prefix}.") for name in hooked)
        forward = backbone if inside else model
        try:
            with torch.no_grad(), progress.progress("gram", total=len(job.samples), unit="samples") as bar:
                for sample in job.samples:
                    ids, _ = encode(tokenizer, sample)
                    forward(input_ids=ids.to(job.device))
                    sample_products.clear()
                    bar.advance()
        finally:
            for handle in handles:
                handle.remove()
        save_statistic({n: g / tokens[n] for n, g in grams.items()}, out_dir, "gram")

    def merge_tensor(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        deltas = list(task_vectors(experts, base))
        grams = self.statistics_of(name, base.device) if base.dim() == 2 else None
        if grams is None:
            return base + averaged(deltas, owned=True)
        if self.params.get("solver", "solve") == "study":
            return study_weight([experts[i] for i in range(len(experts))], grams, self.params["alpha"])
        return base + regmean_delta(deltas, grams, self.params["alpha"])
