"""Every data-free merge method against its formula, computed here independently (exact tensors).

The references use plain sorts and loops, not the engine's radix select or helpers, so a bug in
the shared building blocks shows up as a mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch

from mergebench import plugin_manager
from mergebench.errors import UsageError
from mergebench.merging.api import MergeContext
from mergebench.merging.engine import merge_checkpoints
from tests.helpers import load_tensors

EXCLUDED = ("model.embed_tokens.weight", "lm_head.weight")


def spec(name: str):
    return plugin_manager.registries().methods.get(name)


@pytest.fixture(scope="module")
def weights(tiny_llama, tiny_experts):
    base = load_tensors(tiny_llama)
    experts = [load_tensors(p) for p in tiny_experts.values()]
    return base, experts


def merged(name, params, tiny_llama, experts_dirs, out, **context):
    merge_checkpoints(spec(name), params, tiny_llama, experts_dirs, out, context=MergeContext(**context))
    return load_tensors(out)


def taus(base, experts, name):
    return [e[name] - base[name] for e in experts]


def assert_formula(result, base, expected_delta, atol=2e-6):
    for name, tensor in result.items():
        if name in EXCLUDED:
            assert torch.equal(tensor, base[name]), f"{name} must keep the base's values"
        else:
            torch.testing.assert_close(tensor, base[name] + expected_delta(name), rtol=0, atol=atol, msg=name)


def kth_largest(values: torch.Tensor, k: int) -> float:
    return values.abs().reshape(-1).sort(descending=True).values[k - 1].item()


def ties_reference(trimmed: list[torch.Tensor]) -> torch.Tensor:
    total = sum(trimmed)
    sign = torch.where(total >= 0, 1.0, -1.0)
    agree = [(torch.sign(t) == sign).float() for t in trimmed]
    kept = sum(t * a for t, a in zip(trimmed, agree))
    return kept / torch.clamp(sum(agree), min=1)


# -- the generalized task-arithmetic family -------------------------------------------------
def test_ties_global_scope_trims_each_expert_over_the_whole_model(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("ties", {"density": 0.2, "scaling": 0.7}, tiny_llama, tiny_experts, tmp_path / "out")
    names = [n for n in base if n not in EXCLUDED]
    thresholds = []
    for expert in experts:
        flat = torch.cat([(expert[n] - base[n]).reshape(-1) for n in names])
        thresholds.append(kth_largest(flat, int(0.2 * flat.numel())))

    def expected(name):
        trimmed = [t * (t.abs() >= th) for t, th in zip(taus(base, experts, name), thresholds)]
        return 0.7 * ties_reference(trimmed)

    assert_formula(result, base, expected)


def test_ties_tensor_scope_trims_each_tensor(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("ties", {"density": 0.3, "scaling": 1.0, "scope": "tensor"}, tiny_llama, tiny_experts, tmp_path / "o")

    def expected(name):
        trimmed = []
        for t in taus(base, experts, name):
            k = max(1, int(0.3 * t.numel()))
            trimmed.append(t * (t.abs() >= kth_largest(t, k)))
        return ties_reference(trimmed)

    assert_formula(result, base, expected)


@pytest.mark.parametrize("method, params, same_as, same_params, experts, atol", [
    ("ties", {"density": 1.0, "scaling": 0.6}, "task_arithmetic", {"scaling": 0.6}, 1, 1e-7),  # TIES k=100%, one expert
    ("dare", {"p": 0.0, "scaling": 0.4}, "task_arithmetic", {"scaling": 0.4}, 3, 1e-7),  # DARE p=0
    ("della", {"density": 1.0, "scaling": 0.5}, "ties", {"density": 1.0, "scaling": 0.5}, 3, 1e-7),  # nothing dropped
    ("iso_cts", {"scaling": 1.0, "common_fraction": 1.0}, "iso_c", {"scaling": 1.0}, 3, 1e-5),  # all rank common
])
def test_special_cases_pin_the_semantics(method, params, same_as, same_params, experts, atol, tiny_llama, tiny_experts,
                                         tmp_path):
    chosen = dict(list(tiny_experts.items())[:experts])
    ours = merged(method, params, tiny_llama, chosen, tmp_path / "a")
    reference = merged(same_as, same_params, tiny_llama, chosen, tmp_path / "b")
    assert not torch.equal(ours["model.norm.weight"], load_tensors(tiny_llama)["model.norm.weight"])
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], rtol=0, atol=atol, msg=name)


def test_dare_drops_a_p_fraction_and_rescales_the_rest(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    p = 0.6
    result = merged("dare", {"p": p, "scaling": 1.0}, tiny_llama, {"math": tiny_experts["math"]}, tmp_path / "d")
    kept = total = 0
    for name in base:
        if name in EXCLUDED:
            continue
        tau = experts[0][name] - base[name]
        delta = result[name] - base[name]
        is_kept = delta != 0
        # every entry is either dropped or exactly τ / (1 − p)
        torch.testing.assert_close(delta[is_kept], (tau / (1 - p))[is_kept], rtol=1e-5, atol=1e-6)
        kept += int(is_kept.sum())
        total += tau.numel()
    assert abs(kept / total - (1 - p)) < 0.01


def test_dare_is_reproducible_from_its_seed_whatever_the_threads(tiny_llama, tiny_experts, tmp_path):
    one = merged("dare", {"p": 0.5}, tiny_llama, tiny_experts, tmp_path / "a", seed=3, threads=1)
    two = merged("dare", {"p": 0.5}, tiny_llama, tiny_experts, tmp_path / "b", seed=3, threads=2)
    other = merged("dare", {"p": 0.5}, tiny_llama, tiny_experts, tmp_path / "c", seed=4)
    name = "model.layers.0.mlp.up_proj.weight"
    assert all(torch.equal(one[n], two[n]) for n in one)
    assert not torch.equal(one[name], other[name])


def test_della_keeps_entries_with_rank_based_probabilities_and_rescales_them(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    density, epsilon = 0.4, 0.2
    result = merged("della", {"density": density, "epsilon": epsilon, "scaling": 1.0}, tiny_llama,
                    {"math": tiny_experts["math"]}, tmp_path / "d", seed=1)
    name = "model.layers.1.mlp.down_proj.weight"
    tau = experts[0][name] - base[name]
    delta = result[name] - base[name]
    ranks = tau.abs().argsort(dim=1).argsort(dim=1).float() / (tau.shape[1] - 1)
    probability = density - epsilon + 2 * epsilon * ranks
    kept = delta != 0
    torch.testing.assert_close(delta[kept], (tau / probability)[kept], rtol=1e-5, atol=1e-7)
    # small entries are kept less often than large ones, about density overall
    low, high = ranks < 0.25, ranks > 0.75
    assert kept[low].float().mean() < kept[high].float().mean()
    assert abs(kept.float().mean().item() - density) < 0.05


def test_breadcrumbs_keeps_the_band_below_the_outliers(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    density, gamma = 0.5, 0.1
    result = merged("breadcrumbs", {"density": density, "gamma": gamma, "scaling": 0.8}, tiny_llama, tiny_experts,
                    tmp_path / "b")

    def expected(name):
        total = 0
        for tau in taus(base, experts, name):
            n = tau.numel()
            order = tau.abs().reshape(-1).argsort()  # ascending, as mergekit
            target, top = int(density * n), int(gamma * n)
            bottom = max(0, n - target - top)
            mask = torch.zeros(n)
            mask[order[bottom:bottom + target]] = 1
            total = total + tau * mask.reshape(tau.shape)
        return 0.8 * total

    assert_formula(result, base, expected)


def test_task_arithmetic_family_with_zero_scaling_returns_the_base(weights, tiny_llama, tiny_experts, tmp_path):
    base, _ = weights
    for i, name in enumerate(("ties", "dare", "della", "breadcrumbs", "consensus", "tsv", "iso_c", "iso_cts")):
        result = merged(name, {"scaling": 0.0}, tiny_llama, tiny_experts, tmp_path / str(i))
        assert all(torch.equal(result[n], base[n]) for n in base), name


# -- the other sparsifying methods ------------------------------------------------------------
def test_consensus_keeps_the_multitask_vector_where_two_tall_masks_agree(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("consensus", {"mask_lambda": 0.4, "scaling": 0.9, "k": 2}, tiny_llama, tiny_experts, tmp_path / "c")

    def expected(name):
        ts = taus(base, experts, name)
        multi = sum(ts)
        votes = sum((t.abs() >= 0.4 * (multi - t).abs()).float() for t in ts)
        return 0.9 * multi * (votes >= 2)

    assert_formula(result, base, expected)


def test_dataless_localize_stitch_averages_overlapping_top_k_regions(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("dataless_localize_stitch", {"density": 0.3}, tiny_llama, tiny_experts, tmp_path / "l")
    names = [n for n in base if n not in EXCLUDED]
    thresholds = [kth_largest(torch.cat([(e[n] - base[n]).reshape(-1) for n in names]),
                              int(0.3 * sum(base[n].numel() for n in names))) for e in experts]

    def expected(name):
        ts = taus(base, experts, name)
        masks = [(t.abs() >= th).float() for t, th in zip(ts, thresholds)]
        return sum(t * m for t, m in zip(ts, masks)) / torch.clamp(sum(masks), min=1)

    assert_formula(result, base, expected)


# -- interpolation and subspace methods ---------------------------------------------------------
def test_slerp_follows_the_great_circle_between_two_experts(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    two = {"math": tiny_experts["math"], "coding": tiny_experts["coding"]}
    result = merged("slerp", {"t": 0.3}, tiny_llama, two, tmp_path / "s")

    def expected(name):
        a, b = experts[0][name].double(), experts[1][name].double()
        cos = (a.reshape(-1) @ b.reshape(-1)) / (a.norm() * b.norm())
        if cos.abs() > 0.9995:
            return (0.7 * a + 0.3 * b).float() - base[name]
        omega = math.acos(float(cos))
        return ((math.sin(0.7 * omega) * a + math.sin(0.3 * omega) * b) / math.sin(omega)).float() - base[name]

    assert_formula(result, base, expected, atol=1e-5)
    ends = merged("slerp", {"t": 1.0}, tiny_llama, two, tmp_path / "e")
    torch.testing.assert_close(ends["model.norm.weight"], experts[1]["model.norm.weight"], rtol=0, atol=1e-6)


def test_model_stock_interpolates_by_the_mean_pairwise_cosine(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("model_stock", {}, tiny_llama, tiny_experts, tmp_path / "m")

    def expected(name):
        ts = [t.reshape(-1).double() for t in taus(base, experts, name)]
        cos = [(ts[i] @ ts[j]) / (ts[i].norm() * ts[j].norm()) for i in range(3) for j in range(i + 1, 3)]
        c = sum(cos) / len(cos)
        t = 3 * c / (1 + 2 * c)
        mean = sum(e[name] for e in experts) / 3
        return (t * mean + (1 - t) * base[name]).float() - base[name]

    assert_formula(result, base, expected, atol=1e-5)


def test_tsv_merges_truncated_decorrelated_singular_vectors(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("tsv", {"scaling": 1.0}, tiny_llama, tiny_experts, tmp_path / "t")

    def expected(name):
        ts = taus(base, experts, name)
        if ts[0].dim() != 2:
            return sum(ts) / 3
        k = min(ts[0].shape) // 3
        parts = [torch.linalg.svd(t.double(), full_matrices=False) for t in ts]
        u = torch.cat([p[0][:, :k] for p in parts], dim=1)
        s = torch.cat([p[1][:k] for p in parts])
        vt = torch.cat([p[2][:k] for p in parts], dim=0)
        # nearest orthogonal matrices: (U Uᵀ)^(-1/2) U, computed by eigendecomposition
        def orthogonal(m, left):
            gram = m.T @ m if left else m @ m.T
            w, q = torch.linalg.eigh(gram)
            inv_sqrt = q @ torch.diag(w.rsqrt()) @ q.T
            return m @ inv_sqrt if left else inv_sqrt @ m
        return (orthogonal(u, True) @ torch.diag(s) @ orthogonal(vt, False)).float()

    # float32 SVDs of nearly dependent stacked singular vectors (k_proj: 30 columns in 32 dims)
    # lose a few digits against this float64 reference: agreement to ~1e-4 relative
    assert_formula(result, base, expected, atol=5e-5)


def test_tsv_of_a_single_expert_is_its_task_vector(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("tsv", {"scaling": 1.0}, tiny_llama, {"math": tiny_experts["math"]}, tmp_path / "t")
    assert_formula(result, base, lambda n: experts[0][n] - base[n], atol=1e-5)


def test_iso_c_flattens_the_spectrum_of_the_summed_task_matrix(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("iso_c", {"scaling": 1.5}, tiny_llama, tiny_experts, tmp_path / "i")
    name = "model.layers.0.self_attn.o_proj.weight"
    total = sum(taus(base, experts, name))
    delta = (result[name] - base[name]) / 1.5
    singular = torch.linalg.svdvals(delta)
    torch.testing.assert_close(singular, torch.full_like(singular, torch.linalg.svdvals(total).mean().item()),
                               rtol=1e-4, atol=1e-6)
    # same singular directions as the sum: the projection of the sum onto the result is symmetric PSD
    torch.testing.assert_close(delta.T @ total, (delta.T @ total).T, rtol=0, atol=1e-5)
    norm = "model.norm.weight"
    torch.testing.assert_close(result[norm], base[norm] + 1.5 * sum(taus(base, experts, norm)) / 3, rtol=0, atol=1e-6)


def test_iso_cts_gives_every_task_its_own_directions(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = merged("iso_cts", {"scaling": 1.0, "common_fraction": 0.5}, tiny_llama, tiny_experts, tmp_path / "a")
    name = "model.layers.1.mlp.gate_proj.weight"  # 128 × 64: rank 64, 32 common + 3 × 11 task-specific... rounded
    delta = result[name] - base[name]
    singular = torch.linalg.svdvals(delta)
    assert torch.allclose(singular, singular.mean().expand_as(singular), rtol=1e-4)  # isotropic, full rank


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, params, experts, message", [
    ("ties", {"density": 1.5}, 2, r"density=1.5 is out of range \[0.0, 1.0\]"),
    ("ties", {"scope": "layer"}, 2, r"scope='layer' is not one of 'global', 'tensor'"),
    ("ties", {"densty": 0.2}, 2, r"method 'ties' has no hyperparameter 'densty'; did you mean 'density'\?"),
    ("dare", {"p": 1.0}, 2, r"p=1.0 is out of range"),
    ("della", {"density": 0.1, "epsilon": 0.2}, 2, r"della needs 0 < density − epsilon"),
    ("consensus", {}, 1, r"method 'consensus' needs at least 2 experts, got 1"),
    ("model_stock", {}, 1, r"method 'model_stock' needs at least 2 experts"),
    ("slerp", {}, 3, r"method 'slerp' merges at most 2 experts, got 3"),
    ("fisher", {}, 2, r"method 'fisher' needs fisher statistics of every expert.*--samples DOMAIN=FILE.jsonl"),
])
def test_bad_input_is_refused_before_any_output(name, params, experts, message, tiny_llama, tiny_experts, tmp_path):
    chosen = dict(list(tiny_experts.items())[:experts])
    with pytest.raises(UsageError, match=message):
        merge_checkpoints(spec(name), params, tiny_llama, chosen, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, params", [
    ("ties", {"density": 0.3, "scaling": 1.0, "scope": "tensor"}),
    ("ties", {"density": 0.3, "scaling": 1.0, "scope": "global"}),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.1, "scaling": 1.0}),
    ("task_arithmetic", {"scaling": 1.0}),
    ("della", {"density": 0.5, "scaling": 1.0}),
])
def test_tensors_too_large_to_hold_give_the_same_result(name, params, tiny_llama, tiny_experts, tmp_path, monkeypatch):
    """Large tensors (a 128k vocabulary's embeddings) are merged in row blocks, or read twice: same numbers."""
    from mergebench_builtins.methods import gta

    held = merged(name, params, tiny_llama, tiny_experts, tmp_path / "held", exclude=(), seed=2)
    monkeypatch.setattr(gta, "HOLD_ELEMENTS", 2000)  # every tensor is "large": blocks of a few rows
    blocks = merged(name, params, tiny_llama, tiny_experts, tmp_path / "blocks", exclude=(), seed=2)
    for tensor in held:
        torch.testing.assert_close(blocks[tensor], held[tensor], rtol=0, atol=0, msg=tensor)


def test_svd_retries_in_float64_when_float32_fails_to_converge(monkeypatch):
    from mergebench_builtins.methods import tsv

    real_svd = torch.linalg.svd
    calls = []

    def flaky(matrix, full_matrices=True):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real_svd(matrix, full_matrices=full_matrices)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    matrix = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    u, s, vt = tsv.svd(matrix)
    assert calls == [torch.float32, torch.float64] and s.dtype == torch.float32
    torch.testing.assert_close(s, torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(u @ torch.diag(s) @ vt, matrix)
