"""linear and mergekit_gta against mergekit's formulas, written here independently with sorts and loops.

The formulas are those of mergekit 0.1.5 (``merge_methods/generalized_task_arithmetic.py``,
``sparsify.py``, ``linear.py``); ``test_mergekit_agreement.py`` checks the same against mergekit itself.
"""

from __future__ import annotations

import pytest
import torch

from mergebench import plugin_manager
from mergebench.errors import UsageError
from mergebench.merging.api import MergeContext
from mergebench.merging.engine import merge_checkpoints
from tests.helpers import load_tensors

LABELS = ("math", "coding", "safety")


@pytest.fixture(scope="module")
def weights(tiny_llama, tiny_experts):
    return load_tensors(tiny_llama), [load_tensors(p) for p in tiny_experts.values()]


def merged(name, params, tiny_llama, tiny_experts, out, count=3, **context):
    spec = plugin_manager.registries().methods.get(name)
    merge_checkpoints(spec, params, tiny_llama, dict(list(tiny_experts.items())[:count]), out,
                      context=MergeContext(exclude=(), **context))
    return load_tensors(out)


def top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit's magnitude(): the int(density·n) largest |τ| (at least one), by a full sort."""
    if density >= 1:
        return tau
    k = max(1, int(density * tau.numel()))
    order = tau.abs().reshape(-1).argsort(descending=True)
    mask = torch.zeros(tau.numel())
    mask[order[:k]] = 1
    return tau * mask.reshape(tau.shape)


def outliers_cut(tau: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """mergekit's magnitude_outliers(): drop int(gamma·n) largest, keep the next int(density·n)."""
    if density >= 1:
        return tau
    n = tau.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    order = tau.abs().reshape(-1).argsort()
    mask = torch.zeros(n)
    mask[order[bottom:bottom + target]] = 1
    return tau * mask.reshape(tau.shape)


def gta_reference(deltas: list[torch.Tensor], weights: list[float], consensus: str | None, normalize: bool) -> torch.Tensor:
    weighted = [w * d for w, d in zip(weights, deltas)]
    if consensus is None:
        mixed, divisor = sum(weighted), torch.tensor(float(sum(weights)))
        if abs(float(divisor)) < 1e-8:
            divisor = torch.tensor(1.0)
    else:
        votes = sum(weighted) if consensus == "sum" else sum(torch.sign(d) for d in weighted)
        elected = torch.where(votes >= 0, 1.0, -1.0)
        masks = [(torch.sign(d) == elected).float() for d in weighted]
        mixed = sum(d * m for d, m in zip(weighted, masks))
        divisor = sum(w * m for w, m in zip(weights, masks))
        divisor[divisor == 0] = 1
    return mixed / divisor if normalize else mixed


def test_linear_is_the_weighted_average_and_the_weighted_sum(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    w = [0.5, 0.3, 0.2]
    params = {"weights": "math=0.5,coding=0.3,safety=0.2"}
    result = merged("linear", params, tiny_llama, tiny_experts, tmp_path / "avg")
    raw = merged("linear", {**params, "normalize": False}, tiny_llama, tiny_experts, tmp_path / "sum")
    for name in base:
        total = sum(wi * e[name] for wi, e in zip(w, experts))
        torch.testing.assert_close(result[name], total / sum(w), rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(raw[name], total, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("sparsify, consensus, normalize", [
    ("none", "none", False), ("none", "none", True), ("magnitude", "sum", True), ("magnitude", "count", True),
    ("magnitude", "sum", False), ("magnitude_outliers", "none", False), ("magnitude_outliers", "sum", True),
])
def test_mergekit_gta_is_mergekits_formula(sparsify, consensus, normalize, weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    w, d, g = [1.0, 0.5, -0.3], [0.3, 0.6, 0.2], [0.05, 0.0, 0.02]
    params = {"sparsify": sparsify, "consensus": consensus, "normalize": normalize, "scaling": 0.7,
              "weights": "math=1.0,coding=0.5,safety=-0.3", "densities": "math=0.3,coding=0.6,safety=0.2",
              "gammas": "math=0.05,coding=0.0,safety=0.02"}
    result = merged("mergekit_gta", params, tiny_llama, tiny_experts, tmp_path / "out")
    for name in base:
        taus = [e[name] - base[name] for e in experts]
        if sparsify == "magnitude":
            taus = [top_k(t, di) for t, di in zip(taus, d)]
        elif sparsify == "magnitude_outliers":
            taus = [outliers_cut(t, di, gi) for t, di, gi in zip(taus, d, g)]
        expected = base[name] + 0.7 * gta_reference(taus, w, None if consensus == "none" else consensus, normalize)
        torch.testing.assert_close(result[name], expected, rtol=0, atol=2e-6, msg=name)


def test_random_sparsifiers_keep_the_density_and_rescale_to_the_l1_norm(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    for sparsify, extra in (("random", {}), ("della_magprune", {"epsilons": "math=0.1"})):
        params = {"sparsify": sparsify, "rescale": True, "weights": "math=0.5", "densities": "math=0.3", **extra}
        result = merged("mergekit_gta", params, tiny_llama, tiny_experts, tmp_path / sparsify, count=1)
        again = merged("mergekit_gta", params, tiny_llama, tiny_experts, tmp_path / f"{sparsify}-again", count=1)
        other = merged("mergekit_gta", params, tiny_llama, tiny_experts, tmp_path / f"{sparsify}-seed", count=1, seed=1)
        kept, total = 0, 0
        for name in base:
            tau, delta = experts[0][name] - base[name], result[name] - base[name]
            kept, total = kept + int((delta != 0).sum()), total + delta.numel()
            # one expert: the merged delta is 0.5 · mask · τ · |τ|₁/|mask · τ|₁, so its L1 norm is 0.5 |τ|₁
            torch.testing.assert_close(delta.abs().sum(), 0.5 * tau.abs().sum(), rtol=1e-4, atol=0, msg=name)
            assert torch.equal(again[name], result[name]), f"{sparsify}: not reproducible from the seed ({name})"
        assert abs(kept / total - 0.3) < 0.01, f"{sparsify} kept {kept / total:.3f} of the entries, not 0.3"
        assert any(not torch.equal(other[n], result[n]) for n in base), f"{sparsify}: the seed changes nothing"


def test_without_rescale_kept_entries_are_the_weighted_task_vector(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    params = {"sparsify": "della_magprune", "weights": "math=0.5", "densities": "math=0.4", "epsilons": "math=0.2"}
    result = merged("mergekit_gta", params, tiny_llama, tiny_experts, tmp_path / "out", count=1)
    for name in base:
        tau, delta = experts[0][name] - base[name], result[name] - base[name]
        kept = delta != 0
        torch.testing.assert_close(delta[kept], 0.5 * tau[kept], rtol=1e-5, atol=1e-7)


def test_large_tensors_streamed_twice_merge_as_when_held(weights, tiny_llama, tiny_experts, tmp_path, monkeypatch):
    from mergebench_builtins.methods import mergekit_gta

    params = {"sparsify": "random", "consensus": "sum", "normalize": True, "weights": "math=1.0,coding=0.6,safety=0.3",
              "densities": "math=0.5,coding=0.4,safety=0.7"}
    held = merged("mergekit_gta", params, tiny_llama, tiny_experts, tmp_path / "held")
    monkeypatch.setattr(mergekit_gta, "HOLD_ELEMENTS", 1)
    streamed = merged("mergekit_gta", params, tiny_llama, tiny_experts, tmp_path / "streamed")
    for name in held:
        assert torch.equal(held[name], streamed[name]), name


def test_per_expert_values_must_name_every_expert(tiny_llama, tiny_experts, tmp_path):
    with pytest.raises(UsageError, match=r"weights='math=1,cooding=2' must give one value per expert \(math, coding\); "
                                         r"no expert is called 'cooding'; missing 'coding'"):
        merged("linear", {"weights": "math=1,cooding=2"}, tiny_llama, tiny_experts, tmp_path / "o", count=2)
    with pytest.raises(UsageError, match=r"'0.5' must look like LABEL=NUMBER \(one per expert: math, coding\)"):
        merged("linear", {"weights": "0.5"}, tiny_llama, tiny_experts, tmp_path / "o", count=2)
    with pytest.raises(UsageError, match=r"linear with normalize divides by the sum of the weights, which is 0"):
        merged("linear", {"weights": "math=1,coding=-1"}, tiny_llama, tiny_experts, tmp_path / "o", count=2)
    with pytest.raises(UsageError, match=r"della_magprune needs density ± epsilon inside \(0, 1\).*'math' has density=0.9"):
        merged("mergekit_gta", {"sparsify": "della_magprune", "densities": "math=0.9,coding=0.5"},
               tiny_llama, tiny_experts, tmp_path / "o", count=2)
