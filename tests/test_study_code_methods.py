"""Every built-in method in its ``study-code`` form against the study's algorithm, written here independently.

The references follow the study's released code as docs/fidelity.md describes it (uiuctml/MergeBench at
b245648): the task vectors of every parameter without ``embed`` in its name flattened into one vector per
expert (an untied ``lm_head`` last), statistics over that vector, and the merged vector written back into
every tensor but the head. They use plain sorts, ``kthvalue`` and loops, never the engine's helpers.
"""

from __future__ import annotations

import pytest
import torch

from mergebench import plugin_manager
from mergebench.merging.api import MergeContext
from mergebench.merging.engine import merge_checkpoints
from tests.helpers import load_tensors, write_variant

HEAD = "lm_head.weight"
EMBED = "model.embed_tokens.weight"


def spec(name: str):
    return plugin_manager.registries().methods.get(name)


def study_merge(name, overrides, base_dir, expert_dirs, out, statistics=None):
    chosen = spec(name)
    params = chosen.resolve_params(overrides, "study-code")
    merge_checkpoints(chosen, params, base_dir, expert_dirs, out, context=MergeContext(statistics=statistics or {}))
    return load_tensors(out)


@pytest.fixture(scope="module")
def weights(tiny_llama, tiny_experts):
    return load_tensors(tiny_llama), [load_tensors(p) for p in tiny_experts.values()]


def study_names(base) -> list[str]:
    """The study's flattened parameters: no embedding, the (untied) head last as in ``named_parameters()``."""
    return sorted(n for n in base if "embed" not in n and n != HEAD) + [HEAD]


def flat(tensors, names) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in names])


def write_back(base, vector, names) -> dict:
    """``vector_to_state_dict``: add each slice to its tensor, skipping the head (it is last: nothing shifts)."""
    out, offset = dict(base), 0
    for name in names:
        size = base[name].numel()
        if name != HEAD:
            out[name] = base[name] + vector[offset:offset + size].reshape(base[name].shape)
        offset += size
    return out


def assert_same(result, expected, atol=2e-6):
    assert set(result) == set(expected)
    for name in result:
        torch.testing.assert_close(result[name], expected[name], rtol=0, atol=atol, msg=name)


# -- TIES -------------------------------------------------------------------------------------
def study_ties(base, experts, density, scaling):
    names = study_names(base)
    tvs = torch.stack([flat(e, names) - flat(base, names) for e in experts])
    d = tvs.shape[1]
    kth = tvs.abs().kthvalue(d - int(d * density), dim=1, keepdim=True).values  # the (d − ⌊dK⌋)-th smallest
    trimmed = tvs * (tvs.abs() >= kth)
    signs = torch.sign(trimmed.sum(dim=0))
    signs[signs == 0] = torch.sign(signs.sum())  # the whole model's majority
    keep = torch.where(signs > 0, trimmed > 0, trimmed < 0)
    return write_back(base, scaling * (trimmed * keep).sum(dim=0), names)


def test_ties_study_code_is_the_studys_flat_vector_ties(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = study_merge("ties", {"density": 0.2, "scaling": 0.6}, tiny_llama, tiny_experts, tmp_path / "t")
    assert_same(result, study_ties(base, experts, 0.2, 0.6))
    assert torch.equal(result[HEAD], base[HEAD]) and torch.equal(result[EMBED], base[EMBED])


def test_each_ties_knob_alone_moves_the_result(weights, tiny_llama, tiny_experts, tmp_path):
    """sum vs mean changes most merged entries; ⌊dK⌋+1 and the head in the threshold move the cut."""
    base, _ = weights
    ref = merge_checkpoints(spec("ties"), {"density": 0.2}, tiny_llama, tiny_experts, tmp_path / "paper")
    paper = load_tensors(ref.out_dir)
    name = "model.layers.0.mlp.up_proj.weight"
    for knob, value in [("merge_func", "sum"), ("lm_head_in_threshold", True)]:
        moved = load_tensors(merge_checkpoints(spec("ties"), {"density": 0.2, knob: value}, tiny_llama, tiny_experts,
                                               tmp_path / knob).out_dir)
        assert not torch.equal(moved[name], paper[name]), knob


def test_ties_zero_sign_takes_the_models_majority(tiny_llama, tmp_path):
    """Dyadic weights make trimmed sums exactly 0: there the study elects the majority sign (here −)."""
    base = {n: torch.round(t * 1024) / 1024 for n, t in load_tensors(tiny_llama).items()}
    base_dir = write_variant(tiny_llama, tmp_path / "base", base)
    generator = torch.Generator().manual_seed(7)
    step = {n: -torch.randint(1, 9, t.shape, generator=generator).float() / 1024 for n, t in base.items()}  # mostly −
    name = "model.layers.1.mlp.down_proj.weight"
    first, second = dict(step), dict(step)
    first[name] = step[name].clone()
    second[name] = step[name].clone()
    first[name][:4] = 8 / 1024  # rows 0-3: +8 and −8 cancel exactly, both kept by the top-k
    second[name][:4] = -8 / 1024
    experts = {"a": write_variant(tiny_llama, tmp_path / "a", {n: base[n] + first[n] for n in base}),
               "b": write_variant(tiny_llama, tmp_path / "b", {n: base[n] + second[n] for n in base})}
    study = study_merge("ties", {"density": 0.3, "scaling": 1.0}, base_dir, experts, tmp_path / "study")
    expected = study_ties(base, [load_tensors(p) for p in experts.values()], 0.3, 1.0)
    assert_same(study, expected)
    assert torch.equal(study[name][:4] - base[name][:4], torch.full_like(base[name][:4], -8 / 1024))  # the − one wins
    paper_sign = merge_checkpoints(spec("ties"), {"density": 0.3, "scaling": 1.0, "merge_func": "sum", "topk": "floor_plus_one",
                                                  "lm_head_in_threshold": True}, base_dir, experts, tmp_path / "plus")
    assert torch.equal(load_tensors(paper_sign.out_dir)[name][:4] - base[name][:4], torch.full_like(base[name][:4], 8 / 1024))


# -- Consensus, Soup ------------------------------------------------------------------------------
def test_consensus_study_code_uses_lambda_0_2_and_a_strict_comparison(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = study_merge("consensus", {"scaling": 0.4}, tiny_llama, tiny_experts, tmp_path / "c")
    names = study_names(base)
    tvs = [flat(e, names) - flat(base, names) for e in experts]
    mtl = sum(tvs)
    votes = sum((tv.abs() > (mtl - tv).abs() * 0.2).to(torch.int16) for tv in tvs)
    assert_same(result, write_back(base, mtl * (votes >= 2) * 0.4, names))


def test_consensus_strict_comparison_differs_only_at_ties(tiny_llama, tmp_path):
    """On dyadic values |τ_i| = λ_c|τ_MTL − τ_i| happens; only there do ≥ and > disagree."""
    base = {n: torch.round(t * 1024) / 1024 for n, t in load_tensors(tiny_llama).items()}
    base_dir = write_variant(tiny_llama, tmp_path / "base", base)
    generator = torch.Generator().manual_seed(3)
    experts = {d: write_variant(tiny_llama, tmp_path / d, {n: t + torch.randint(-2, 3, t.shape, generator=generator) / 1024
                                                          for n, t in base.items()}) for d in ("a", "b", "c")}
    ge, gt = (load_tensors(merge_checkpoints(spec("consensus"), {"mask_lambda": 0.5, "mask_compare": c}, base_dir, experts,
                                             tmp_path / c).out_dir) for c in ("ge", "gt"))
    name = "model.layers.0.self_attn.q_proj.weight"
    taus = [load_tensors(p)[name] - base[name] for p in experts.values()]
    ties = sum((t.abs() == 0.5 * (sum(taus) - t).abs()) & (t != 0) for t in taus) > 0
    differs = ge[name] != gt[name]
    assert differs.any() and not (differs & ~ties).any()


def test_soup_study_code_keeps_embeddings_and_head_at_the_base(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    result = study_merge("soup", {}, tiny_llama, tiny_experts, tmp_path / "s")
    names = study_names(base)
    tvs = [flat(e, names) - flat(base, names) for e in experts]
    assert_same(result, write_back(base, (1 / len(experts)) * sum(tvs), names))
    paper = load_tensors(merge_checkpoints(spec("soup"), {}, tiny_llama, tiny_experts, tmp_path / "p").out_dir)
    torch.testing.assert_close(paper[EMBED], sum(e[EMBED] for e in experts) / 3, rtol=0, atol=1e-6)


# -- Dataless Localize-and-Stitch ----------------------------------------------------------------------
def study_dataless(base, experts, density):
    """The study's Localizer and Stitcher: the base moves under each expert; overlaps count the last other mask."""
    names = study_names(base)
    head = base[HEAD].numel()
    moving = flat(base, names).clone()
    masks = []
    for expert in experts:
        tv = flat(expert, names) - moving
        k = int(density * tv.numel())
        threshold = tv.abs().sort(descending=True).values[k - 1]
        mask = tv.abs() >= threshold
        masks.append(mask)
        moving[:-head] += (tv * mask)[:-head]  # interpolate_model writes into the shared base, never the head
    weights = []
    for i, mask in enumerate(masks):
        overlap = mask.clone().float()
        for j in range(len(masks)):
            if j != i:
                intersect = mask & masks[j]
        overlap = overlap + intersect  # outside the loop, as localize_utils.py:208
        weights.append(torch.where(overlap == 0, 0.0, 1 / overlap))
    total = sum(w * (flat(e, names) - moving) for w, e in zip(weights, experts))
    moved_base = write_back(base, moving - flat(base, names), names)
    return write_back(moved_base, total, names)


def test_dataless_localize_stitch_study_code_is_the_studys_localizer_and_stitcher(weights, tiny_llama, tiny_experts,
                                                                                   tmp_path):
    base, experts = weights
    result = study_merge("dataless_localize_stitch", {"density": 0.2}, tiny_llama, tiny_experts, tmp_path / "l")
    assert_same(result, study_dataless(base, experts, 0.2), atol=5e-6)


def test_the_two_localize_stitch_bugs_by_hand(tiny_llama, tmp_path):
    """Three experts, two entries whose task vectors dwarf the rest, followed through the study's code by hand.

    Entry A: θ = 1, 3, 8 (base 0). The base moves to 1, then 3, then 8 (every move is large, so every mask
    takes A); each weight is 1/(1 + 1) against the last other mask, so θ = 8 + ½(1−8) + ½(3−8) + ½(8−8) = 2.
    The paper: the mean of the task vectors, 4. Entry B: θ = 1, 0, 8: expert 2 never changed B, but against
    the moved base (1) its task vector is −1, large, so it selects B and moves the base back to 0; then
    θ = 8 + ½(1−8) + ½(0−8) + ½·0 = 0.5, where the paper averages experts 1 and 3: 4.5.
    """
    base = {n: torch.zeros_like(t) if n != EMBED else t for n, t in load_tensors(tiny_llama).items()}
    base_dir = write_variant(tiny_llama, tmp_path / "base", base)
    name = "model.layers.0.mlp.gate_proj.weight"
    generator = torch.Generator().manual_seed(11)
    experts = {}
    for label, (a, b) in zip(("one", "two", "three"), [(1.0, 1.0), (3.0, 0.0), (8.0, 8.0)]):
        tensors = {n: t + 0.01 * torch.randn(t.shape, generator=generator) if n != EMBED else t for n, t in base.items()}
        tensors[name][0, 0], tensors[name][0, 1] = a, b
        experts[label] = write_variant(tiny_llama, tmp_path / label, tensors)
    study = study_merge("dataless_localize_stitch", {"density": 0.1}, base_dir, experts, tmp_path / "study")
    paper = load_tensors(merge_checkpoints(spec("dataless_localize_stitch"), {"density": 0.1}, base_dir, experts,
                                           tmp_path / "paper").out_dir)
    assert study[name][0, 0].item() == pytest.approx(2.0, abs=1e-6)
    assert paper[name][0, 0].item() == pytest.approx(4.0, abs=1e-6)
    assert study[name][0, 1].item() == pytest.approx(0.5, abs=1e-6)
    assert paper[name][0, 1].item() == pytest.approx(4.5, abs=1e-6)
    # each bug alone: the moving base without the overlap bug, and the overlap bug on the pretrained base
    drift = load_tensors(merge_checkpoints(spec("dataless_localize_stitch"), {"density": 0.1, "drifting_base": True},
                                           base_dir, experts, tmp_path / "a").out_dir)
    assert drift[name][0, 0].item() == pytest.approx(8 + (1 - 8 + 3 - 8) / 3, abs=1e-6)  # B = 8, overlaps of 3
    last = load_tensors(merge_checkpoints(spec("dataless_localize_stitch"), {"density": 0.1, "overlap": "last"},
                                          base_dir, experts, tmp_path / "b").out_dir)
    assert last[name][0, 0].item() == pytest.approx((1 + 3 + 8) / 2, abs=1e-6)  # each weighted ½, not ⅓


# -- Fisher, RegMean -------------------------------------------------------------------------------------
SAMPLES = [{"prompt": "Add:", "completion": "2 + 2 = 4"}, {"prompt": "Code:", "completion": "print('hi')"},
           {"prompt": "Say", "completion": "hello there"}, {"prompt": "Count", "completion": "1 2 3"}]


def test_fisher_study_statistic_squares_the_mean_last_token_argmax_gradient(tiny_llama, tiny_experts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergebench.cache import ArtifactCache
    from mergebench.merging.api import DEFAULT_EXCLUDE, task_vector_filter
    from mergebench.merging.statistics import encode, ensure_statistics

    params = spec("fisher").resolve_params({"samples": 4}, "study-code")
    fisher_class = spec("fisher").load()
    found = ensure_statistics(ArtifactCache(tmp_path / "cache"), fisher_class, fisher_class.statistic_params(params),
                              tiny_llama, {"math": ("k", tiny_experts["math"])}, {"math": SAMPLES},
                              merged=task_vector_filter(DEFAULT_EXCLUDE), exclude=DEFAULT_EXCLUDE)
    fisher = load_tensors(found["math"])
    model = AutoModelForCausalLM.from_pretrained(tiny_experts["math"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_experts["math"])
    name = "model.layers.1.mlp.up_proj.weight"
    model.zero_grad()
    for sample in SAMPLES:  # one step of 4 samples (group = 4): the gradient of their mean loss, squared once
        ids, _ = encode(tokenizer, sample)
        logits = model(input_ids=ids).logits[0, -1]
        (-torch.log_softmax(logits, dim=-1)[logits.argmax()] / 4).backward()
    expected = dict(model.named_parameters())[name].grad ** 2
    torch.testing.assert_close(fisher[name], expected, rtol=1e-4, atol=1e-14)


def test_fisher_study_code_adds_1e_10_to_every_fisher(tiny_llama, tiny_experts, tmp_path):
    from safetensors.torch import save_file

    base = load_tensors(tiny_llama)
    experts = {d: load_tensors(p) for d, p in tiny_experts.items()}
    name = "model.layers.0.self_attn.v_proj.weight"
    fishers, paths = {}, {}
    for i, domain in enumerate(experts):
        fishers[domain] = {n: torch.full_like(t, 1e-10 * i) for n, t in base.items() if n not in (EMBED, HEAD)}
        (tmp_path / domain).mkdir()
        save_file(fishers[domain], str(tmp_path / domain / "model.safetensors"))
        paths[domain] = tmp_path / domain
    result = study_merge("fisher", {}, tiny_llama, tiny_experts, tmp_path / "out", statistics=paths)
    weights = [fishers[d][name] + 1e-10 for d in experts]  # 1, 2, 3 × 1e-10: a weighted mean, not the plain one
    expected = sum(w * experts[d][name] for w, d in zip(weights, experts)) / sum(weights)
    torch.testing.assert_close(result[name], expected, rtol=0, atol=2e-6)
    assert not torch.allclose(expected, sum(e[name] for e in experts.values()) / 3, atol=1e-4)


def test_regmean_study_solver_zeroes_a_dead_inputs_column(tiny_llama, tiny_experts, tmp_path):
    from safetensors.torch import save_file

    base = load_tensors(tiny_llama)
    experts = {d: load_tensors(p) for d, p in tiny_experts.items()}
    generator = torch.Generator().manual_seed(5)
    paths, grams = {}, {}
    for domain in experts:
        grams[domain] = {}
        for n, t in base.items():
            if t.dim() == 2 and n not in (EMBED, HEAD):
                x = torch.randn(400, t.shape[1], generator=generator)
                x[:, 3] = 0  # input 3 never fires: a zero row and column in every Gram
                grams[domain][n] = x.T @ x / 400
        (tmp_path / domain).mkdir()
        save_file(grams[domain], str(tmp_path / domain / "model.safetensors"))
        paths[domain] = tmp_path / domain
    alpha = 0.5
    study = study_merge("regmean", {"alpha": alpha}, tiny_llama, tiny_experts, tmp_path / "s", statistics=paths)
    ours = load_tensors(merge_checkpoints(spec("regmean"), {"alpha": alpha}, tiny_llama, tiny_experts, tmp_path / "o",
                                          context=MergeContext(statistics=paths)).out_dir)
    name = "model.layers.1.self_attn.o_proj.weight"
    shrunk = [alpha * grams[d][name] + (1 - alpha) * torch.diag(torch.diagonal(grams[d][name])) for d in experts]
    rhs = sum(g @ experts[d][name].T for g, d in zip(shrunk, experts))
    expected = (torch.linalg.pinv(sum(shrunk)) @ rhs).T  # a zero diagonal entry: the study takes pinv
    torch.testing.assert_close(study[name], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(study[name][:, 3], torch.zeros_like(study[name][:, 3]), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[name][:, 3], base[name][:, 3], rtol=0, atol=1e-6)
    assert base[name][:, 3].abs().max() > 1e-2  # so the two differ


# -- the methods whose study-code form is the paper's -------------------------------------------------
def test_task_arithmetic_and_dare_compute_the_same_in_both_semantics(tiny_llama, tiny_experts, tmp_path):
    for name, params in [("task_arithmetic", {"scaling": 0.4}), ("dare", {"p": 0.5, "scaling": 0.7})]:
        assert spec(name).resolve_params(params, "study-code") == spec(name).resolve_params(params)
        study = study_merge(name, params, tiny_llama, tiny_experts, tmp_path / f"s-{name}")
        paper = load_tensors(merge_checkpoints(spec(name), params, tiny_llama, tiny_experts, tmp_path / name).out_dir)
        assert_same(study, paper, atol=0)


def test_the_bugs_follow_the_studys_expert_order_whatever_order_they_are_given_in(weights, tiny_llama, tiny_experts,
                                                                                   tmp_path):
    """The study loads instruction, math, coding, safety, multilingual (main.py:6); the drift depends on it."""
    base, _ = weights
    reversed_experts = dict(reversed(list(tiny_experts.items())))  # safety, coding, math
    result = study_merge("dataless_localize_stitch", {"density": 0.2}, tiny_llama, reversed_experts, tmp_path / "r")
    in_study_order = [load_tensors(tiny_experts[d]) for d in ("math", "coding", "safety")]
    assert_same(result, study_dataless(base, in_study_order, 0.2), atol=5e-6)
    given = spec("dataless_localize_stitch").resolve_params({"density": 0.2, "drifting_base": True, "overlap": "last",
                                                             "lm_head_in_threshold": True})
    merge_checkpoints(spec("dataless_localize_stitch"), given, tiny_llama, reversed_experts, tmp_path / "g")
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(load_tensors(tmp_path / "g")[name], result[name], atol=1e-4)
