"""The streaming merge engine and the first methods, against formulas computed here."""

from __future__ import annotations

import pytest
import torch

from mergebench import plugin_manager
from mergebench.errors import CheckpointError, IncompatibleModelsError, UsageError
from mergebench.merging.api import MergeContext
from mergebench.merging.engine import merge_checkpoints
from tests.helpers import load_tensors, write_variant

EMBEDDING_OR_HEAD = ("model.embed_tokens.weight", "lm_head.weight")


def method(name: str):
    return plugin_manager.registries().methods.get(name)


def test_soup_is_the_elementwise_mean_of_every_tensor(tiny_llama, tiny_experts, tmp_path):
    merge_checkpoints(method("soup"), {}, tiny_llama, tiny_experts, tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    experts = [load_tensors(p) for p in tiny_experts.values()]
    for name, tensor in merged.items():
        expected = (experts[0][name] + experts[1][name] + experts[2][name]) / 3
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-7)


def test_task_arithmetic_matches_its_formula_and_keeps_embeddings_from_the_base(tiny_llama, tiny_experts, tmp_path):
    report = merge_checkpoints(method("task_arithmetic"), {"scaling": 0.7}, tiny_llama, tiny_experts, tmp_path / "out")
    merged, base = load_tensors(tmp_path / "out"), load_tensors(tiny_llama)
    experts = [load_tensors(p) for p in tiny_experts.values()]
    for name, tensor in merged.items():
        if name in EMBEDDING_OR_HEAD:
            assert torch.equal(tensor, base[name]), name
        else:
            expected = base[name] + 0.7 * sum(e[name] - base[name] for e in experts)
            torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)
    assert report.kept_tensors == 2 and report.params == {"scaling": 0.7}


def test_task_arithmetic_with_zero_scaling_returns_the_base(tiny_llama, tiny_experts, tmp_path):
    merge_checkpoints(method("task_arithmetic"), {"scaling": 0.0}, tiny_llama, tiny_experts, tmp_path / "out")
    merged, base = load_tensors(tmp_path / "out"), load_tensors(tiny_llama)
    assert all(torch.equal(merged[n], base[n]) for n in base)


def test_exclusions_are_configurable(tiny_llama, tiny_experts, tmp_path):
    context = MergeContext(exclude=())
    merge_checkpoints(method("task_arithmetic"), {"scaling": 1.0}, tiny_llama, tiny_experts, tmp_path / "out", context=context)
    merged, base = load_tensors(tmp_path / "out"), load_tensors(tiny_llama)
    experts = [load_tensors(p) for p in tiny_experts.values()]
    name = "model.embed_tokens.weight"
    torch.testing.assert_close(merged[name], base[name] + sum(e[name] - base[name] for e in experts), rtol=0, atol=1e-6)


def test_output_is_a_loadable_hugging_face_checkpoint_stamped_with_its_method(tiny_llama, tiny_experts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergebench.checkpoint import CheckpointReader

    merge_checkpoints(method("soup"), {}, tiny_llama, tiny_experts, tmp_path / "out", metadata={"mergebench_key": "k1"})
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.chat_template and model.config.model_type == "llama"
    assert CheckpointReader(tmp_path / "out").metadata()["mergebench_method"] == "soup"
    assert CheckpointReader(tmp_path / "out").metadata()["mergebench_key"] == "k1"
    assert "soup" in (tmp_path / "out" / "README.md").read_text()


def test_an_expert_with_extra_vocabulary_rows_is_trimmed_to_the_base(tiny_llama, tiny_experts, tmp_path):
    """As MergeBench's Llama-3.2-3B experts (128,320 rows against the base's 128,256)."""
    base = load_tensors(tiny_llama)
    bigger = load_tensors(tiny_experts["math"])
    extra = 64
    for name in EMBEDDING_OR_HEAD:
        bigger[name] = torch.cat([bigger[name], torch.full((extra, bigger[name].shape[1]), 9.0)])
    rows = base["model.embed_tokens.weight"].shape[0]
    padded = write_variant(tiny_llama, tmp_path / "padded", bigger, config_updates={"vocab_size": rows + extra})
    experts = {"math": padded, "coding": tiny_experts["coding"]}
    merge_checkpoints(method("soup"), {}, tiny_llama, experts, tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    coding = load_tensors(tiny_experts["coding"])
    for name in EMBEDDING_OR_HEAD:
        assert merged[name].shape[0] == rows
        torch.testing.assert_close(merged[name], (bigger[name][:rows] + coding[name]) / 2, rtol=0, atol=1e-7)


def test_experts_of_another_architecture_are_refused(tiny_llama, tiny_gemma2, tmp_path):
    with pytest.raises(IncompatibleModelsError, match="expert 'math' .* is a Gemma2ForCausalLM but the base is a LlamaForCausalLM"):
        merge_checkpoints(method("soup"), {}, tiny_llama, {"math": tiny_gemma2}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_shape_mismatch_names_the_tensor(tiny_llama, tiny_experts, tmp_path):
    tensors = load_tensors(tiny_experts["math"])
    tensors["model.norm.weight"] = torch.ones(65)
    odd = write_variant(tiny_llama, tmp_path / "odd", tensors)
    with pytest.raises(IncompatibleModelsError, match=r"tensor 'model.norm.weight' has shape \[65\] in expert 'math' but \[64\]"):
        merge_checkpoints(method("soup"), {}, tiny_llama, {"math": odd}, tmp_path / "out")


def test_a_different_vocabulary_is_refused(tiny_llama, tiny_experts, tmp_path):
    import json

    odd = write_variant(tiny_llama, tmp_path / "odd", load_tensors(tiny_experts["math"]))
    data = json.loads((odd / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[10], list(vocab)[11]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (odd / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(IncompatibleModelsError, match="expert 'math' uses a different vocabulary: token id 10"):
        merge_checkpoints(method("soup"), {}, tiny_llama, {"math": odd}, tmp_path / "out")


def test_nan_in_an_expert_is_an_error_naming_expert_and_tensor(tiny_llama, tiny_experts, tmp_path):
    tensors = load_tensors(tiny_experts["coding"])
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    broken = write_variant(tiny_llama, tmp_path / "nan", tensors)
    with pytest.raises(CheckpointError, match="expert 'coding' has NaN or Inf values in tensor 'model.layers.0.mlp.up_proj.weight'"):
        merge_checkpoints(method("task_arithmetic"), {}, tiny_llama, {"math": tiny_experts["math"], "coding": broken}, tmp_path / "out")


def test_bad_hyperparameters_fail_before_any_output(tiny_llama, tiny_experts, tmp_path):
    with pytest.raises(UsageError, match="out of range"):
        merge_checkpoints(method("task_arithmetic"), {"scaling": -2}, tiny_llama, tiny_experts, tmp_path / "out")
    assert not (tmp_path / "out").exists()
