"""Checkpoints checked before transformers loads them, on the paths outside the merge's own reader:
the statistics of data-aware methods and the finetuning trainers. Pickles are never unpickled there,
and a truncated shard is one line naming it, not a loader's traceback."""

from __future__ import annotations

import shutil

import pytest
import torch

from mergebench.errors import CheckpointError
from tests.helpers import load_tensors
from tests.test_checkpoint import truncated_copy
from tests.test_finetune import EXAMPLES, FAST, GRPO_ITEMS, _tiny_grpo


@pytest.fixture
def pickle_only(tiny_experts, tmp_path):
    folder = shutil.copytree(tiny_experts["math"], tmp_path / "pickled", ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_tensors(tiny_experts["math"]), folder / "pytorch_model.bin")
    return folder


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)


def test_statistics_never_unpickle_an_expert(pickle_only, no_unpickling):
    from mergebench.merging.statistics import load_model

    with pytest.raises(CheckpointError) as caught:
        load_model(pickle_only, "cpu")
    assert str(caught.value) == (
        f"{pickle_only} has only pickle weights (pytorch_model.bin); the statistics of data-aware methods load safetensors "
        "only, also with --allow-pickle: convert it (load it and save_pretrained with safe_serialization=True)")


def test_statistics_name_a_truncated_shard_in_one_line(tiny_experts, tmp_path):
    from mergebench.merging.statistics import load_model

    broken = truncated_copy(tiny_experts["math"], tmp_path / "broken")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors file .* truncated or corrupt"):
        load_model(broken, "cpu")


def test_statistics_load_the_expert_as_it_is(tiny_experts):
    from mergebench.merging.statistics import load_model

    model, tokenizer = load_model(tiny_experts["math"], "cpu")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not model.training and model.get_parameter(name).dtype == torch.float32
    torch.testing.assert_close(model.get_parameter(name).detach(), load_tensors(tiny_experts["math"])[name], rtol=0, atol=0)
    assert tokenizer("ab")["input_ids"]


def test_a_data_aware_pipeline_merge_refuses_a_pickled_hub_expert(pickle_only, tiny_llama, cache, no_unpickling):
    """The pytest path (statistics_for, as the pipeline calls it), where --mb-allow-pickle may be on."""
    from mergebench import plugin_manager
    from mergebench.merging.statistics import statistics_for

    spec = plugin_manager.registries().methods.get("fisher")
    samples = [{"prompt": "Add 2 and 2.", "completion": "4"}]
    with pytest.raises(CheckpointError, match="has only pickle weights"):
        statistics_for(spec, spec.resolve_params({}), cache, ("base", tiny_llama), {"math": ("math", pickle_only)},
                       lambda label, count: samples, exclude=())


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_a_truncated_base_stops_finetuning_before_any_loader(trainer, tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from mergebench.finetune.grpo import run_grpo
    from mergebench.finetune.sft import run_sft

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("a loader ran"))
    broken = truncated_copy(tiny_llama, tmp_path / "hub" / "meta-llama" / "Llama-3.2-3B")
    run = {"sft": lambda base: run_sft(base, EXAMPLES, tmp_path / "out", FAST, seed=0, work_dir=tmp_path / "w",
                                       description="mini-math"),
           "grpo": lambda base: run_grpo(base, GRPO_ITEMS, tmp_path / "out", _tiny_grpo(), seed=0, work_dir=tmp_path / "w",
                                         description="mini-math")}[trainer]
    with pytest.raises(CheckpointError, match=rf"{broken / 'model.safetensors'} is not a readable safetensors file"):
        run(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="mini-math: .* has no safetensors weights, which finetuning loads"):
        run(broken)
    assert not (tmp_path / "out").exists()
