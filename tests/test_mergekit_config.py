"""mergekit configs in: what each maps onto, and every part that does not map refused by name, before anything is written."""

from __future__ import annotations

import pytest

from mergebench.cli import main
from mergebench.errors import UsageError
from mergebench.merging.mergekit_config import plan_config


def ties_config(**changes) -> dict:
    config = {
        "merge_method": "ties", "base_model": "/m/base",
        "models": [{"model": "/m/base"},
                   {"model": "/m/math", "parameters": {"weight": 1.0, "density": 0.3}},
                   {"model": "/m/coding", "parameters": {"weight": 0.5, "density": 0.6}}],
        "parameters": {"lambda": 0.9}, "dtype": "bfloat16",
    }
    config.update(changes)
    return config


def test_ties_maps_onto_mergekit_gta_with_per_expert_weights_and_densities():
    plan = plan_config(ties_config())
    assert (plan.merge_method, plan.method, plan.base) == ("ties", "mergekit_gta", "/m/base")
    assert plan.experts == {"math": "/m/math", "coding": "/m/coding"}  # the base is not an expert
    assert plan.params == {"scaling": 0.9, "sparsify": "magnitude", "consensus": "sum", "normalize": True,
                           "rescale": False, "weights": "math=1.0,coding=0.5", "densities": "math=0.3,coding=0.6"}
    assert plan.exclude == () and plan.dtype == "bfloat16"


@pytest.mark.parametrize("method, sparsify, consensus, normalize, rescale", [
    ("task_arithmetic", "none", "none", False, False),
    ("dare_ties", "random", "sum", False, True),
    ("dare_linear", "random", "none", False, True),
    ("breadcrumbs", "magnitude_outliers", "none", False, False),
    ("breadcrumbs_ties", "magnitude_outliers", "sum", False, False),
    ("della", "della_magprune", "sum", True, True),
    ("della_linear", "della_magprune", "none", False, True),
])
def test_each_gta_method_takes_mergekits_sparsifier_consensus_and_defaults(method, sparsify, consensus, normalize, rescale):
    plan = plan_config(ties_config(merge_method=method, parameters={"lambda": 0.5}))
    assert (plan.params["sparsify"], plan.params["consensus"]) == (sparsify, consensus)
    assert (plan.params["normalize"], plan.params["rescale"]) == (normalize, rescale)


def test_global_parameters_fill_in_per_model_ones_and_per_model_ones_win():
    config = ties_config(merge_method="breadcrumbs", parameters={"weight": 0.25, "density": 0.7, "gamma": 0.02})
    config["models"][1]["parameters"] = {"density": 0.4}
    config["models"][2]["parameters"] = {}
    plan = plan_config(config)
    assert plan.params["weights"] == "math=0.25,coding=0.25"
    assert plan.params["densities"] == "math=0.4,coding=0.7"
    assert plan.params["gammas"] == "math=0.02,coding=0.02"


def test_linear_slerp_and_model_stock_map_onto_our_methods():
    linear = plan_config({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 2}},
                                                               {"model": "b", "parameters": {"weight": 1}}]})
    assert (linear.method, linear.params, linear.base) == ("linear", {"weights": "a=2.0,b=1.0", "normalize": True}, None)
    slerp = plan_config({"merge_method": "slerp", "base_model": "b", "models": [{"model": "a"}, {"model": "b"}],
                         "parameters": {"t": 0.3}})
    assert (slerp.method, slerp.params, list(slerp.experts)) == ("slerp", {"t": 0.3}, ["b", "a"])  # base first: t=0 is it
    stock = plan_config({"merge_method": "model_stock", "base_model": "x/base", "models": [{"model": "x/m"}, {"model": "y/m"}]})
    assert (stock.method, stock.experts) == ("model_stock", {"m": "x/m", "m-2": "y/m"})  # labels made unique


def test_our_weight_zero_filters_come_back_as_exclusions():
    weight = [{"filter": "lm_head.weight", "value": 0.0}, {"filter": "model.embed_tokens.weight", "value": 0}, {"value": 1.0}]
    config = ties_config(merge_method="task_arithmetic")
    for model in config["models"][1:]:
        model["parameters"] = {"weight": weight}
    plan = plan_config(config)
    assert plan.exclude == (r"lm_head\.weight", r"model\.embed_tokens\.weight")
    assert plan.params["weights"] == "math=1.0,coding=1.0"


REFUSALS = [
    ({"slices": [{"sources": []}]}, "slices: slices stack or cut layers"),
    ({"modules": {"text": {}}}, "modules: per-module configs"),
    ({"tokenizer_source": "union"}, "tokenizer_source: union: a tokenizer merge"),
    ({"tokenizer": {"source": "union"}}, "tokenizer: only tokenizer: {source: base} maps"),
    ({"chat_template": "chatml"}, "chat_template: mergebench keeps the base's tokenizer"),
    ({"merge_method": "nuslerp"}, "merge_method: nuslerp: has no counterpart in mergebench; these run: task_arithmetic, ties"),
    ({"dtype": "int8"}, "dtype: int8: must be one of float32, bfloat16, float16"),
    ({"merge_mehtod": "ties"}, "merge_mehtod: not a key of mergekit configs"),
    ({"parameters": {"lambda": [0.1, 0.9]}}, "parameters.lambda: a gradient over layers ([0.1, 0.9])"),
    ({"parameters": {"lambda": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]}},
     "parameters.lambda: a per-tensor filter ('mlp') gives tensors different values"),
    ({"parameters": {"t": 0.5}}, "parameters.t: ties has no parameter 't'"),
    ({"base_model": "/m/base+/m/lora"}, "base_model: /m/base+/m/lora: a model+LoRA reference"),
    ({"base_model": "org/model@main"}, "base_model: org/model@main: a hub revision"),
]


@pytest.mark.parametrize("changes, message", REFUSALS, ids=[m.split(":")[0] for _, m in REFUSALS])
def test_a_part_that_does_not_map_is_refused_by_name(changes, message):
    with pytest.raises(UsageError, match="^mergekit config CONFIG: " + __import__("re").escape(message)):
        plan_config(ties_config(**changes))


def test_per_model_mistakes_are_refused_by_name():
    config = ties_config()
    config["models"][1]["parameters"] = {"weight": 1.0, "lambda": 0.5}
    with pytest.raises(UsageError, match=r"parameters of /m/math.lambda: lambda is shared by all models: .*move it there"):
        plan_config(config)
    config["models"][1]["parameters"] = {"density": [0.2, 0.8], "weight": 1}
    with pytest.raises(UsageError, match=r"parameters of /m/math.density: a gradient over layers"):
        plan_config(config)
    config["models"][1]["parameters"] = {"density": 0.5}
    with pytest.raises(UsageError, match=r"models: /m/math: ties needs a weight for every model besides base_model"):
        plan_config(config)
    config["models"][1]["parameters"] = {"weight": [{"filter": "mlp", "value": 0}, {"value": 1}]}
    with pytest.raises(UsageError, match=r"filters of weight 0 differ between models"):
        plan_config(config)  # excluding mlp from one model only has no counterpart


def test_method_contracts_are_checked():
    with pytest.raises(UsageError, match=r"models: slerp interpolates base_model and exactly one other model; got 2"):
        plan_config({"merge_method": "slerp", "base_model": "a", "models": [{"model": "b"}, {"model": "c"}],
                     "parameters": {"t": 0.5}})
    with pytest.raises(UsageError, match=r"parameters: t: slerp needs t"):
        plan_config({"merge_method": "slerp", "base_model": "a", "models": [{"model": "b"}]})
    with pytest.raises(UsageError, match=r"parameters: filter_wise: .*has no counterpart"):
        plan_config({"merge_method": "model_stock", "base_model": "a", "models": [{"model": "b"}, {"model": "c"}],
                     "parameters": {"filter_wise": True}})
    with pytest.raises(UsageError, match=r"base_model: ties needs a base_model"):
        plan_config(ties_config(base_model=None))
    della = ties_config(merge_method="della", parameters={"density": 0.9, "weight": 1.0})
    for model in della["models"]:
        model.pop("parameters", None)
    with pytest.raises(UsageError, match=r"parameters of /m/math: density ± epsilon must lie inside \(0, 1\).*"
                                         r"density=0.9, epsilon=0.15"):
        plan_config(della)


# -- the command ------------------------------------------------------------------------------
def write(path, text):
    path.write_text(text)
    return path


def test_the_command_refuses_before_writing_anything(tmp_path, tiny_llama, tiny_experts, capsys):
    out = tmp_path / "merged"
    config = write(tmp_path / "c.yml", f"merge_method: ties\nbase_model: {tiny_llama}\nmodels:\n"
                                       f"  - model: {tiny_experts['math']}\n    parameters: {{weight: 1, density: [0.1, 0.5]}}\n")
    assert main(["merge", "--mergekit-config", str(config), "--out", str(out)]) == 2
    assert "parameters of " in capsys.readouterr().err and not out.exists()
    missing = write(tmp_path / "m.yml", f"merge_method: linear\nmodels:\n  - model: {tmp_path / 'nowhere'}\n"
                                        "    parameters: {weight: 1}\n")
    assert main(["merge", "--mergekit-config", str(missing), "--out", str(out)]) == 2
    assert "is not a local checkpoint folder; mergebench reads no hub models" in capsys.readouterr().err
    wrong_dtype = write(tmp_path / "d.yml", f"merge_method: linear\ndtype: bfloat16\nmodels:\n  - model: {tiny_experts['math']}\n"
                                            "    parameters: {weight: 1}\n")
    assert main(["merge", "--mergekit-config", str(wrong_dtype), "--out", str(out)]) == 2
    assert "dtype: bfloat16: mergekit would write bfloat16; mergebench writes the base checkpoint's dtype, float32" \
        in capsys.readouterr().err
    assert main(["merge", "--mergekit-config", str(config), "--method", "ties", "--out", str(out)]) == 2
    assert "--mergekit-config says the method, models and parameters; drop --method" in capsys.readouterr().err
    assert main(["merge", "--mergekit-config", str(tmp_path / "absent.yml"), "--out", str(out)]) == 2
    assert "cannot read mergekit config" in capsys.readouterr().err
    assert not out.exists()


def test_merge_without_config_still_needs_method_and_base(tmp_path, capsys):
    assert main(["merge", "--out", str(tmp_path / "o")]) == 2
    assert "give --method and --base (or a --mergekit-config)" in capsys.readouterr().err
