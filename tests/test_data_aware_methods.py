"""Fisher, RegMean and Localize-and-Stitch: their statistics, their formulas, their cache and their CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.cli import main
from mergebench.errors import UsageError
from mergebench.merging.api import DEFAULT_EXCLUDE, MergeContext, task_vector_filter
from mergebench.merging.engine import merge_checkpoints
from mergebench.merging.statistics import encode, ensure_statistics
from tests.helpers import load_tensors

EXCLUDED = ("model.embed_tokens.weight", "lm_head.weight")
SAMPLES = [{"prompt": "Add:", "completion": "2 + 2 = 4"}, {"prompt": "Code:", "completion": "print('hi')"}]


def spec(name: str):
    return plugin_manager.registries().methods.get(name)


def method(name: str):
    return spec(name).load()


@pytest.fixture(scope="module")
def weights(tiny_llama, tiny_experts):
    return load_tensors(tiny_llama), {d: load_tensors(p) for d, p in tiny_experts.items()}


def write_statistics(directory: Path, tensors: dict) -> Path:
    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    return directory


def random_statistics(weights, tmp_path, make):
    base, _ = weights
    generator = torch.Generator().manual_seed(0)
    stats = {}
    for domain in ("math", "coding", "safety"):
        stats[domain] = {n: make(t, generator) for n, t in base.items() if n not in EXCLUDED}
    paths = {d: write_statistics(tmp_path / d, s) for d, s in stats.items()}
    return stats, paths


def run(name, params, tiny_llama, tiny_experts, out, statistics):
    merge_checkpoints(spec(name), params, tiny_llama, tiny_experts, out,
                      context=MergeContext(statistics=statistics))
    return load_tensors(out)


def test_fisher_is_the_fisher_weighted_average_of_the_experts(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    fishers, paths = random_statistics(weights, tmp_path, lambda t, g: torch.rand(t.shape, generator=g) ** 4)
    name = "model.layers.0.mlp.up_proj.weight"
    fishers["math"][name][0, :5] = 0  # nobody has information there: the plain mean
    fishers["coding"][name][0, :5] = 0
    fishers["safety"][name][0, :5] = 0
    paths = {d: write_statistics(tmp_path / f"again-{d}", s) for d, s in fishers.items()}
    result = run("fisher", {}, tiny_llama, tiny_experts, tmp_path / "out", paths)
    for n, tensor in result.items():
        if n in EXCLUDED:
            assert torch.equal(tensor, base[n])
            continue
        weighted = sum(fishers[d][n] * experts[d][n] for d in experts)
        total = sum(fishers[d][n] for d in experts)
        mean = sum(experts[d][n] for d in experts) / 3
        expected = torch.where(total > 0, weighted / total, mean)
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6, msg=n)


def test_regmean_solves_the_least_squares_of_every_linear_layer(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights

    def gram(t, g):
        if t.dim() != 2:
            return torch.zeros(0)
        x = torch.randn(200, t.shape[1], generator=g)
        return x.T @ x / 200

    grams, _ = random_statistics(weights, tmp_path, gram)
    grams = {d: {n: g for n, g in s.items() if g.numel()} for d, s in grams.items()}
    paths = {d: write_statistics(tmp_path / f"g-{d}", s) for d, s in grams.items()}
    alpha = 0.5
    result = run("regmean", {"alpha": alpha}, tiny_llama, tiny_experts, tmp_path / "out", paths)
    for n, tensor in result.items():
        if n in EXCLUDED:
            continue
        if n in grams["math"]:
            shrunk = {d: alpha * grams[d][n] + (1 - alpha) * torch.diag(torch.diagonal(grams[d][n])) for d in experts}
            lhs = sum(shrunk[d].double() for d in experts)
            rhs = sum(experts[d][n].double() @ shrunk[d].double() for d in experts)
            expected = (rhs @ torch.linalg.inv(lhs)).float()  # W = (Σ W_i G_i)(Σ G_i)⁻¹
        else:
            expected = sum(experts[d][n] for d in experts) / 3
        torch.testing.assert_close(tensor, expected, rtol=1e-4, atol=1e-5, msg=n)


def test_regmean_with_equal_grams_and_diagonal_only_is_the_mean(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    ones = {n: torch.eye(t.shape[1]) * 2 for n, t in base.items() if t.dim() == 2 and n not in EXCLUDED}
    paths = {d: write_statistics(tmp_path / d, ones) for d in experts}
    result = run("regmean", {"alpha": 0.0}, tiny_llama, tiny_experts, tmp_path / "out", paths)
    name = "model.layers.1.self_attn.v_proj.weight"
    torch.testing.assert_close(result[name], sum(e[name] for e in experts.values()) / 3, rtol=0, atol=1e-6)


def test_localize_stitch_stitches_the_trained_masks(weights, tiny_llama, tiny_experts, tmp_path):
    base, experts = weights
    masks, paths = random_statistics(weights, tmp_path,
                                     lambda t, g: (torch.rand(t.shape, generator=g) < 0.3).to(torch.uint8))
    result = run("localize_stitch", {}, tiny_llama, tiny_experts, tmp_path / "out", paths)
    for n, tensor in result.items():
        if n in EXCLUDED:
            continue
        m = {d: masks[d][n].float() for d in experts}
        stitched = sum(m[d] * (experts[d][n] - base[n]) for d in experts) / torch.clamp(sum(m.values()), min=1)
        torch.testing.assert_close(tensor, base[n] + stitched, rtol=0, atol=1e-6, msg=n)


# -- the statistics themselves -------------------------------------------------------------
def test_fisher_statistic_is_the_mean_squared_gradient_per_sample(tiny_llama, tiny_experts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = ArtifactCache(tmp_path / "cache")
    found = ensure_statistics(cache, method("fisher"), {"samples": 2}, tiny_llama, {"math": ("k-math", tiny_experts["math"])},
                              {"math": SAMPLES}, merged=task_vector_filter(DEFAULT_EXCLUDE), exclude=DEFAULT_EXCLUDE)
    fisher = load_tensors(found["math"])
    assert "model.embed_tokens.weight" not in fisher and "model.layers.0.mlp.up_proj.weight" in fisher
    model = AutoModelForCausalLM.from_pretrained(tiny_experts["math"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_experts["math"])
    name = "model.layers.1.self_attn.q_proj.weight"
    squares = []
    for sample in SAMPLES:
        ids, labels = encode(tokenizer, sample)
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        squares.append(dict(model.named_parameters())[name].grad ** 2)
    torch.testing.assert_close(fisher[name], (squares[0] + squares[1]) / 2, rtol=1e-4, atol=1e-12)
    # a second request reuses the artifact
    again = ensure_statistics(cache, method("fisher"), {"samples": 2}, tiny_llama, {"math": ("k-math", tiny_experts["math"])},
                              {"math": SAMPLES}, merged=task_vector_filter(DEFAULT_EXCLUDE), exclude=DEFAULT_EXCLUDE)
    assert again == found and cache.events[-1].hit


def test_gram_statistic_is_the_token_average_of_layer_inputs(tiny_llama, tiny_experts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = ensure_statistics(ArtifactCache(tmp_path / "cache"), method("regmean"), {"samples": 2}, tiny_llama,
                              {"math": ("k", tiny_experts["math"])}, {"math": SAMPLES},
                              merged=task_vector_filter(DEFAULT_EXCLUDE), exclude=DEFAULT_EXCLUDE)
    grams = load_tensors(found["math"])
    model = AutoModelForCausalLM.from_pretrained(tiny_experts["math"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_experts["math"])
    # the input of layer 0's attention projections is the normed embedding of the tokens
    inputs = []
    with torch.no_grad():
        for sample in SAMPLES:
            ids, _ = encode(tokenizer, sample)
            inputs.append(model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))[0])
    x = torch.cat(inputs)
    expected = x.T @ x / x.shape[0]
    torch.testing.assert_close(grams["model.layers.0.self_attn.q_proj.weight"], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grams["model.layers.0.self_attn.k_proj.weight"], expected, rtol=1e-4, atol=1e-6)
    assert "lm_head.weight" not in grams and grams["model.layers.1.mlp.down_proj.weight"].shape == (128, 128)


def _naive_grams(model_dir, merged) -> dict[str, torch.Tensor]:
    """Every merged linear's token-averaged XᵀX, one product per layer and sample, through the whole model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    seen: dict[str, list[torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and merged(f"{name}.weight"):
            module.register_forward_hook(lambda _m, inputs, _o, key=f"{name}.weight":
                                         seen.setdefault(key, []).append(inputs[0].reshape(-1, inputs[0].shape[-1])))
    with torch.no_grad():
        for sample in SAMPLES:
            model(input_ids=encode(tokenizer, sample)[0])
    return {key: torch.cat(xs).T @ torch.cat(xs) / torch.cat(xs).shape[0] for key, xs in seen.items()}


@pytest.mark.parametrize("exclude", [DEFAULT_EXCLUDE, ()], ids=["default", "lm_head merged"])
def test_gram_statistic_of_every_layer_matches_one_product_per_layer(exclude, tiny_llama, tiny_experts, tmp_path):
    """Layers reading one input share its product, and the pass skips the LM head unless it is merged:
    every Gram is still what a product per layer over the whole model's forward gives."""
    found = ensure_statistics(ArtifactCache(tmp_path / "cache"), method("regmean"), {"samples": 2}, tiny_llama,
                              {"math": ("k", tiny_experts["math"])}, {"math": SAMPLES},
                              merged=task_vector_filter(exclude), exclude=exclude)
    grams = load_tensors(found["math"])
    expected = _naive_grams(tiny_experts["math"], task_vector_filter(exclude))
    assert sorted(grams) == sorted(expected) and ("lm_head.weight" in grams) == (exclude == ())
    for name in expected:
        torch.testing.assert_close(grams[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_localize_mask_without_training_is_the_top_k_initialization(tiny_llama, tiny_experts, weights, tmp_path):
    base, experts = weights
    params = {"samples": 2, "density": 0.2, "sigmoid_bias": 3.0, "lr": 0.0, "epochs": 1, "l1": 0.0}
    found = ensure_statistics(ArtifactCache(tmp_path / "cache"), method("localize_stitch"), params, tiny_llama,
                              {"math": ("k", tiny_experts["math"])}, {"math": SAMPLES},
                              merged=task_vector_filter(DEFAULT_EXCLUDE), exclude=DEFAULT_EXCLUDE)
    masks = load_tensors(found["math"])
    names = sorted(masks)
    flat = torch.cat([(experts["math"][n] - base[n]).reshape(-1) for n in names])
    threshold = flat.abs().sort(descending=True).values[int(0.2 * flat.numel()) - 1]
    for n in names:
        assert masks[n].dtype == torch.uint8
        assert torch.equal(masks[n].bool(), (experts["math"][n] - base[n]).abs() >= threshold), n


def test_localize_training_moves_the_mask(tiny_llama, tiny_experts, tmp_path):
    params = {"samples": 2, "density": 0.2, "sigmoid_bias": 0.01, "lr": 1e6, "epochs": 2, "l1": 0.0}
    found = ensure_statistics(ArtifactCache(tmp_path / "cache"), method("localize_stitch"), params, tiny_llama,
                              {"math": ("k", tiny_experts["math"])}, {"math": SAMPLES},
                              merged=task_vector_filter(DEFAULT_EXCLUDE), exclude=DEFAULT_EXCLUDE)
    masks = load_tensors(found["math"])
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept != pytest.approx(0.2, abs=1e-3)


def test_statistics_keys_of_the_built_ins_are_pinned():
    """Cached statistics stay valid across refactorings: these digests were computed before the builders moved."""
    from mergebench.merging.statistics import fingerprint, statistics_key

    samples = fingerprint(SAMPLES)
    ls_params = {"samples": 8, "density": 0.1, "sigmoid_bias": 3.0, "lr": 1e8, "epochs": 1, "l1": 0.0}
    digests = {method(name).statistic: statistics_key(method(name), "expert-key", params, samples, DEFAULT_EXCLUDE,
                                                      "base-key").digest
               for name, params in [("fisher", {"samples": 8}), ("regmean", {"samples": 8}), ("localize_stitch", ls_params)]}
    assert digests == {
        "fisher": "415967786fce9a0a49aa127c6504bb04eea5bd0a6b69d3daa67d1a51e68919c2",
        "gram": "10ada4c774153c3462534ddb2d76ee44106e775003cfd7cb389a5a55e904c1c7",
        "ls_mask": "d60654bfe93af57797866797370b948f113d45c5fc982d86e9ee771449efcbfa",
    }


# -- pipeline and CLI ------------------------------------------------------------------------
def test_pipeline_computes_statistics_from_recipe_samples_once(cache):
    from mergebench.pipeline import Pipeline, RunContext

    registries = plugin_manager.registries()
    pipeline = Pipeline(RunContext(cache=cache), registries)
    model = registries.models.get("tiny-llama")
    ref, _ = pipeline.merged(model, registries.methods.get("regmean"), {"samples": 2})
    stages = [e.stage for e in cache.events if not e.hit]
    assert stages.count("statistics") == 5 and stages[-1] == "merged"
    assert "statistics" in cache.read_meta(ref.key)["inputs"]
    again, _ = pipeline.merged(model, registries.methods.get("regmean"), {"samples": 2, "alpha": 0.5})
    assert again.key != ref.key
    assert [e.stage for e in cache.events if not e.hit].count("statistics") == 5  # reused for another α


def test_cli_merges_with_samples_files_and_refuses_without(tiny_llama, tiny_experts, tmp_path, capsys):
    files = {}
    for domain in ("math", "coding"):
        files[domain] = tmp_path / f"{domain}.jsonl"
        files[domain].write_text("\n".join(json.dumps(s) for s in SAMPLES))
    common = ["merge", "--method", "fisher", "--base", str(tiny_llama), "--expert", f"math={tiny_experts['math']}",
              "--expert", f"coding={tiny_experts['coding']}", "--cache-dir", str(tmp_path / "cache")]
    assert main([*common, "--out", str(tmp_path / "none")]) == 2
    assert "no training samples for expert(s) math, coding" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    code = main([*common, "--samples", f"math={files['math']}", "--samples", f"coding={files['coding']}",
                 "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "model.safetensors").is_file()
    assert len(list((tmp_path / "cache" / "statistics").iterdir())) == 2


def test_samples_for_a_data_free_method_are_refused(tiny_llama, tiny_experts, tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(SAMPLES[0]))
    code = main(["merge", "--method", "ties", "--base", str(tiny_llama), "--expert", f"math={tiny_experts['math']}",
                 "--samples", f"math={path}", "--out", str(tmp_path / "out")])
    assert code == 2 and "method 'ties' uses no training samples" in capsys.readouterr().err


def test_a_malformed_samples_file_names_the_line(tmp_path):
    from mergebench.merging.statistics import read_jsonl

    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(UsageError, match=r"sample 1 of .*bad.jsonl must be an object with string 'prompt' and non-empty"):
        read_jsonl(path)


def test_the_cli_merges_with_every_registered_method(tiny_llama, tiny_experts, tmp_path):
    """``mergebench merge --method M`` for all sixteen methods (data-aware ones with --samples)."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(json.dumps(s) for s in SAMPLES))
    names = plugin_manager.registries().methods.names()
    assert len(names) >= 16
    for name in names:
        method = spec(name)
        chosen = dict(list(tiny_experts.items())[:2])
        args = ["merge", "--method", name, "--base", str(tiny_llama), "--out", str(tmp_path / name),
                "--cache-dir", str(tmp_path / "cache"), *[f"--expert={d}={p}" for d, p in chosen.items()]]
        if method.load().statistic:
            args += [f"--samples={d}={samples}" for d in chosen]
        assert main(args) == 0, name
        tensor = "model.layers.0.mlp.up_proj.weight"
        merged = load_tensors(tmp_path / name)[tensor]
        assert not torch.equal(merged, load_tensors(tiny_llama)[tensor]), f"{name} returned the base"
        assert not torch.equal(merged, load_tensors(chosen["math"])[tensor]), f"{name} returned an expert"
