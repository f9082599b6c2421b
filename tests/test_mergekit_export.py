"""mergekit configs out: the mergekit_config.yml beside every merge, or the reason there is none.

Run by mergekit itself in ``test_mergekit_agreement.py``; here: what is written, and that our own
importer reads it back into the same merge.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mergebench import plugin_manager
from mergebench.cli import main
from mergebench.merging.api import DEFAULT_EXCLUDE, MergeContext
from mergebench.merging.engine import merge_checkpoints
from mergebench.merging.mergekit_export import NoForm, mergekit_config
from tests.helpers import load_tensors

PKG = "mergebench_builtins.methods"
NAMES = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"]
EXPERTS = {"math": Path("/m/math"), "coding": Path("/m/coding")}


def export(impl, params, names=NAMES, excluded=("model.embed_tokens.weight", "lm_head.weight"), dtype="F32"):
    return mergekit_config(f"{PKG}.{impl}", params, Path("/m/base"), EXPERTS, names, lambda n: n not in excluded, dtype)


def test_dare_becomes_dare_linear_with_its_rescaling_as_weights():
    config = export("dare:Dare", {"scaling": 0.8, "p": 0.75})
    assert config["merge_method"] == "dare_linear"
    assert config["parameters"] == {"lambda": 0.8, "normalize": False, "rescale": False}
    math = config["models"][1]["parameters"]
    assert math["density"] == 0.25
    assert math["weight"] == [{"filter": "model.embed_tokens.weight", "value": 0.0},
                              {"filter": "lm_head.weight", "value": 0.0}, {"value": 4.0}]  # 1/(1−p); excluded at 0


def test_soup_is_linear_and_a_bf16_base_is_written_back_as_bf16():
    config = export("soup:Soup", {}, excluded=(), dtype="BF16")
    assert config == {"merge_method": "linear",
                      "models": [{"model": "/m/math", "parameters": {"weight": 1.0}},
                                 {"model": "/m/coding", "parameters": {"weight": 1.0}}],
                      "parameters": {"normalize": True}, "dtype": "float32", "out_dtype": "bfloat16"}


@pytest.mark.parametrize("impl, params, reason", [
    ("ties:Ties", {"scaling": 1.0, "density": 0.2, "scope": "global"},
     "ties with scope=global trims over the whole model; mergekit trims each tensor"),
    ("ties:Ties", {"scaling": 1.0, "density": 0.2, "scope": "tensor", "topk": "floor_plus_one"},
     "ties with topk=floor_plus_one keeps one entry more than the density's share; mergekit computes topk=floor"),
    ("ties:Ties", {"scaling": 1.0, "density": 0.2, "scope": "tensor", "zero_sign": "majority"},
     "elects the model-wide majority sign where a sum is 0"),
    ("soup:Soup", {"embeddings": "base"}, "soup with embeddings=base keeps the base's embeddings"),
    ("della:Della", {"scaling": 1.0, "density": 0.2, "epsilon": 0.1}, "they agree only at density 1"),
    ("slerp:Slerp", {"t": 0.5}, "slerp here keeps the base's model.embed_tokens.weight, lm_head.weight"),
    ("model_stock:ModelStock", {}, "merge with --no-exclude for a mergekit form"),
    ("fisher:Fisher", {"samples": 8}, "mergekit has no data-aware method"),
    ("consensus:Consensus", {"scaling": 1.0, "mask_lambda": 0.5, "k": 2}, "TALL masks"),
    ("iso:IsoC", {"scaling": 1.0}, "mergekit has no SVD-based method"),
    ("mergekit_gta:MergekitGTA", {"scaling": 1.0, "sparsify": "magnitude", "consensus": "count", "weights": "",
                                  "densities": "", "gammas": "", "epsilons": "", "normalize": True, "rescale": False},
     "mergekit has no method with sparsify=magnitude and consensus=count"),
])
def test_merges_mergekit_cannot_express_say_why(impl, params, reason):
    with pytest.raises(NoForm, match=reason):
        export(impl, params)


def test_an_exclusion_mergekit_filters_would_overmatch_is_refused():
    names = ["a.weight", "xa.weight", "b.weight"]
    with pytest.raises(NoForm, match=r"'a.weight' is part of 'xa.weight'"):
        export("task_arithmetic:TaskArithmetic", {"scaling": 0.3}, names=names, excluded=("a.weight",))


def test_a_third_party_method_has_no_known_form():
    with pytest.raises(NoForm, match="mergebench knows no mergekit form of my_merges:Median"):
        mergekit_config("my_merges:Median", {}, Path("/m/base"), EXPERTS, NAMES, lambda n: True, "F32")


def merge(method, params, tiny_llama, tiny_experts, out, exclude=DEFAULT_EXCLUDE):
    spec = plugin_manager.registries().methods.get(method)
    merge_checkpoints(spec, params, tiny_llama, tiny_experts, out, context=MergeContext(exclude=exclude))
    return out


def test_every_merge_writes_the_file_and_names_it_in_the_model_card(tiny_llama, tiny_experts, tmp_path):
    ties = merge("ties", {}, tiny_llama, tiny_experts, tmp_path / "ties")  # the study's default: global top-k
    text = (ties / "mergekit_config.yml").read_text()
    assert text.startswith("# mergebench merged this model with `ties`")
    assert "# mergekit cannot express this merge: ties with scope=global" in text and yaml.safe_load(text) is None
    assert "- no mergekit form: ties with scope=global" in (ties / "README.md").read_text()
    tensor = merge("ties", {"scope": "tensor"}, tiny_llama, tiny_experts, tmp_path / "tensor")
    assert yaml.safe_load((tensor / "mergekit_config.yml").read_text())["merge_method"] == "ties"
    assert "- mergekit: `mergekit_config.yml` reproduces this merge with mergekit-yaml" in (tensor / "README.md").read_text()


@pytest.mark.parametrize("method, params, exclude", [
    ("task_arithmetic", {"scaling": 0.7}, DEFAULT_EXCLUDE),
    ("ties", {"density": 0.3, "scaling": 0.9, "scope": "tensor"}, DEFAULT_EXCLUDE),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.05}, DEFAULT_EXCLUDE),
    ("soup", {}, DEFAULT_EXCLUDE),
    ("model_stock", {}, ()),
])
def test_our_exported_config_read_back_by_our_importer_is_the_same_merge(method, params, exclude, tiny_llama,
                                                                         tiny_experts, tmp_path):
    ours = merge(method, params, tiny_llama, tiny_experts, tmp_path / "ours", exclude)
    again = tmp_path / "again"
    assert main(["merge", "--mergekit-config", str(ours / "mergekit_config.yml"), "--out", str(again)]) == 0
    first, second = load_tensors(ours), load_tensors(again)
    assert set(first) == set(second)
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-6, atol=1e-7, msg=name)
