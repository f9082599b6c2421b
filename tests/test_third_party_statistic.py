"""A data-aware method from a separately installed distribution brings its own statistic.

The plugin below is one module and one entry point, as a user would ship it. Its statistic (the
mean absolute input of every linear layer, per input feature) weights the experts' task vectors
column by column; nothing in mergebench names it.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from mergebench import plugin_manager
from mergebench.cli import main
from mergebench.merging.statistics import encode
from tests.helpers import load_tensors

PLUGIN = '''
import torch

from mergebench import hookimpl
from mergebench.checkpoint import CheckpointReader
from mergebench.merging.api import MergeMethod
from mergebench.merging.statistics import encode, load_model, save_statistic
from mergebench.merging.tensors import averaged, task_vectors
from mergebench.specs import HyperParam, MethodSpec


class InputScaled(MergeMethod):
    """base + sum_i w_i * tau_i / sum_i w_i per input column, w_i = expert i's mean |input| of the layer."""

    statistic = "mean_abs_input"

    @classmethod
    def compute_statistic(cls, job, out_dir):
        model, tokenizer = load_model(job.expert_dir, job.device)
        sums, tokens, handles = {}, {}, []
        for module_name, module in model.named_modules():
            weight = f"{module_name}.weight"
            if isinstance(module, torch.nn.Linear) and job.merged(weight):
                def hook(_module, inputs, _output, key=weight):
                    x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs()
                    sums[key] = sums[key] + x.sum(0) if key in sums else x.sum(0)
                    tokens[key] = tokens.get(key, 0) + x.shape[0]
                handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            for sample in job.samples:
                model(input_ids=encode(tokenizer, sample)[0].to(job.device))
        for handle in handles:
            handle.remove()
        save_statistic({n: s / tokens[n] for n, s in sums.items()}, out_dir, cls.statistic)

    def merge_tensor(self, name, base, experts):
        readers = [CheckpointReader(self.context.statistics[d]) for d in self.context.domains]
        if not all(name in reader for reader in readers):
            return base + averaged(list(task_vectors(experts, base)), owned=True)
        weights = [reader.get(name).to(base.device, torch.float32) for reader in readers]
        weighted = sum(w * delta for w, delta in zip(weights, task_vectors(experts, base)))
        return base + weighted / sum(weights)


@hookimpl
def mergebench_register_methods(register):
    register(MethodSpec(name="input_scaled", impl="mb_inputscale:InputScaled", family="coefficient",
                        hyperparams=(HyperParam("samples", 3, low=1),)))
    register(MethodSpec(name="input_scaled_uncounted", impl="mb_inputscale:InputScaled", family="coefficient"))
'''

EXCLUDED = ("model.embed_tokens.weight", "lm_head.weight")
SAMPLES = {
    "math": [{"prompt": "Add:", "completion": "2 + 2 = 4"}, {"prompt": "Halve 10.", "completion": "5"},
             {"prompt": "Square 3.", "completion": "3 * 3 = 9"}, {"prompt": "unused", "completion": "beyond samples=3"}],
    "coding": [{"prompt": "Code:", "completion": "print('hi')"}, {"prompt": "Loop:", "completion": "for i in x: pass"},
               {"prompt": "Def:", "completion": "def f(): return 1"}, {"prompt": "unused", "completion": "beyond samples=3"}],
}


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """``mb-inputscale`` 0.1 installed on sys.path (a dist-info with its entry point), for this test only."""
    site = tmp_path / "site"
    (site / "mb_inputscale-0.1.dist-info").mkdir(parents=True)
    (site / "mb_inputscale-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-inputscale\nVersion: 0.1\n")
    (site / "mb_inputscale-0.1.dist-info" / "entry_points.txt").write_text("[mergebench]\ninputscale = mb_inputscale\n")
    (site / "mb_inputscale.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugin_manager, "_cached", None)  # registries rebuilt with the plugin, restored afterwards
    yield
    sys.modules.pop("mb_inputscale", None)


def mean_abs_qkv_inputs(expert_dir, samples) -> dict[str, torch.Tensor]:
    """The statistic of every q/k/v projection, computed by hand: |input_layernorm(hidden state)| per feature."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(expert_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(expert_dir)
    inputs: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for sample in samples:
            hidden = model(input_ids=encode(tokenizer, sample)[0], output_hidden_states=True).hidden_states
            for layer, block in enumerate(model.model.layers):
                inputs.setdefault(layer, []).append(block.input_layernorm(hidden[layer])[0])
    found = {}
    for layer, rows in inputs.items():
        mean = torch.cat(rows).abs().mean(0)
        for projection in ("q_proj", "k_proj", "v_proj"):
            found[f"model.layers.{layer}.self_attn.{projection}.weight"] = mean
    return found


def test_a_plugin_method_computes_caches_and_merges_with_its_own_statistic(installed, tiny_llama, tiny_experts,
                                                                           tmp_path, monkeypatch, capsys):
    experts = {d: tiny_experts[d] for d in ("math", "coding")}
    files = {}
    for domain, rows in SAMPLES.items():
        files[domain] = tmp_path / f"{domain}.jsonl"
        files[domain].write_text("\n".join(json.dumps(r) for r in rows))
    cache = tmp_path / "cache"
    args = ["merge", "--method", "input_scaled", "--base", str(tiny_llama), "--cache-dir", str(cache),
            *[f"--expert={d}={p}" for d, p in experts.items()], *[f"--samples={d}={f}" for d, f in files.items()]]

    monkeypatch.setenv("COLUMNS", "300")
    assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "inputscale" in listing and "mb-inputscale" in listing
    # not a terminal: one block per method, under the plugin that provides it
    provided = listing.split("-- from plugin inputscale, mb-inputscale 0.1\n", 1)[1].split("\n-- from", 1)[0]
    row = next(line for line in provided.splitlines() if line.startswith("input_scaled "))
    assert "data: training_samples" in row

    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    stat_dirs = sorted((cache / "statistics").iterdir())
    assert len(stat_dirs) == 2
    statistics = {}
    for folder in stat_dirs:
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["label"] in ("mean_abs_input statistics of math", "mean_abs_input statistics of coding")
        statistics[meta["label"].rsplit(" ", 1)[-1]] = load_tensors(folder)

    # the statistic, on the first samples=3 (the hyperparameter's default) of each file, against a hand computation
    for domain, path in experts.items():
        by_hand = mean_abs_qkv_inputs(path, SAMPLES[domain][:3])
        for name, expected in by_hand.items():
            torch.testing.assert_close(statistics[domain][name], expected, rtol=1e-5, atol=1e-6, msg=name)
        assert set(by_hand) < set(statistics[domain]) and "lm_head.weight" not in statistics[domain]

    # the merge: per input column, task vectors weighted by the experts' statistics; the rest averaged
    base = load_tensors(tiny_llama)
    weights = {d: load_tensors(p) for d, p in experts.items()}
    merged = load_tensors(tmp_path / "first")
    for name, tensor in merged.items():
        if name in EXCLUDED:
            assert torch.equal(tensor, base[name]), name
            continue
        deltas = {d: weights[d][name] - base[name] for d in experts}
        if name in statistics["math"]:
            w = {d: statistics[d][name] for d in experts}
            expected = base[name] + (w["math"] * deltas["math"] + w["coding"] * deltas["coding"]) / (w["math"] + w["coding"])
        else:
            expected = base[name] + (deltas["math"] + deltas["coding"]) / 2
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6, msg=name)

    # a second merge reads the cached statistics: nothing is computed again
    def never(cls, job, out_dir):
        raise AssertionError("the statistic was computed again")

    monkeypatch.setattr(sys.modules["mb_inputscale"].InputScaled, "compute_statistic", classmethod(never))
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    assert sorted((cache / "statistics").iterdir()) == stat_dirs
    second = load_tensors(tmp_path / "second")
    assert all(torch.equal(second[n], merged[n]) for n in merged)


def test_a_plugin_method_without_a_samples_hyperparameter_is_told_to_declare_one(installed, tiny_llama, tiny_experts,
                                                                                 tmp_path, capsys):
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps(SAMPLES["math"][0]))
    code = main(["merge", "--method", "input_scaled_uncounted", "--base", str(tiny_llama), "--expert",
                 f"math={tiny_experts['math']}", "--samples", f"math={path}", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert ("method 'input_scaled_uncounted' computes mean_abs_input statistics from training samples but its spec "
            "declares no 'samples' hyperparameter saying how many per expert") in capsys.readouterr().err
