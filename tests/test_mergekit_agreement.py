"""mergekit 0.1.5 itself against us, both ways, on tiny Llama checkpoints (float32).

* **In**: each mapped mergekit config, run by ``mergebench merge --mergekit-config`` and by
  mergekit, gives the same tensors to float32 tolerance (per-model weights and densities,
  ``normalize`` on and off, every tensor merged).
* **Out**: the ``mergekit_config.yml`` we write beside a merge, run by mergekit, reproduces our
  output (our built-in methods, embeddings and ``lm_head`` excluded as weight-0 filters).

Random methods (DARE, DELLA) draw their masks with different generators, so they are compared
by statistics of the merged task vector over all tensors: the fraction of entries kept, its L1
norm (what the rescaling preserves), mean and variance, each within a tolerance set by the
sampling noise. mergekit comes from :mod:`mergebench.merging.mergekit_venv` (``MERGEBENCH_MERGEKIT``
or a venv built once under ``~/.cache/mergebench-tools``; skipped only when the package index
cannot be reached). All mergekit merges run in one mergekit process per module.
"""

from __future__ import annotations

import math

import pytest
import torch

from mergebench import plugin_manager
from mergebench.cli import main
from mergebench.merging.api import DEFAULT_EXCLUDE, MergeContext
from mergebench.merging.engine import merge_checkpoints
from tests.helpers import load_tensors

pytestmark = pytest.mark.slow

# name: (mergekit config with {base}/{math}/{coding}/{safety} for the folders, how to compare)
CONFIGS = {
    "linear": ("""merge_method: linear
models:
  - {{model: {math}, parameters: {{weight: 0.6}}}}
  - {{model: {coding}, parameters: {{weight: 0.3}}}}
  - {{model: {safety}, parameters: {{weight: 0.1}}}}
""", "exact"),
    "linear_unnormalized": ("""merge_method: linear
models:
  - {{model: {math}, parameters: {{weight: 0.5}}}}
  - {{model: {coding}, parameters: {{weight: 0.25}}}}
parameters: {{normalize: false}}
""", "exact"),
    "task_arithmetic": ("""merge_method: task_arithmetic
base_model: {base}
models:
  - {{model: {base}}}
  - {{model: {math}, parameters: {{weight: 0.7}}}}
  - {{model: {coding}, parameters: {{weight: 0.4}}}}
parameters: {{lambda: 0.9}}
""", "exact"),
    "task_arithmetic_normalized": ("""merge_method: task_arithmetic
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 0.7}}}}
  - {{model: {coding}, parameters: {{weight: 0.4}}}}
  - {{model: {safety}, parameters: {{weight: 0.2}}}}
parameters: {{normalize: true}}
""", "exact"),
    "ties": ("""merge_method: ties
base_model: {base}
models:
  - {{model: {base}}}
  - {{model: {math}, parameters: {{weight: 1.0, density: 0.3}}}}
  - {{model: {coding}, parameters: {{weight: 0.5, density: 0.6}}}}
  - {{model: {safety}, parameters: {{weight: 0.8, density: 0.2}}}}
parameters: {{lambda: 0.9}}
""", "exact"),
    "ties_unnormalized": ("""merge_method: ties
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 1.0, density: 0.4}}}}
  - {{model: {coding}, parameters: {{weight: 0.5, density: 0.4}}}}
parameters: {{normalize: false, weight: 1.0}}
""", "exact"),
    "breadcrumbs": ("""merge_method: breadcrumbs
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 1.0, density: 0.6, gamma: 0.05}}}}
  - {{model: {coding}, parameters: {{weight: 0.5, density: 0.8, gamma: 0.02}}}}
parameters: {{lambda: 0.8}}
""", "exact"),
    "breadcrumbs_ties": ("""merge_method: breadcrumbs_ties
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 1.0, density: 0.6}}}}
  - {{model: {coding}, parameters: {{weight: 0.7, density: 0.7}}}}
  - {{model: {safety}, parameters: {{weight: 0.4, density: 0.5}}}}
parameters: {{gamma: 0.03, normalize: true}}
""", "exact"),
    "slerp": ("""merge_method: slerp
base_model: {math}
models:
  - {{model: {math}}}
  - {{model: {coding}}}
parameters: {{t: 0.3}}
""", "exact"),
    "model_stock": ("""merge_method: model_stock
base_model: {base}
models:
  - {{model: {math}}}
  - {{model: {coding}}}
  - {{model: {safety}}}
""", "exact"),
    "dare_ties": ("""merge_method: dare_ties
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 1.0, density: 0.5}}}}
  - {{model: {coding}, parameters: {{weight: 0.6, density: 0.7}}}}
""", "stats"),
    "dare_linear": ("""merge_method: dare_linear
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 0.8, density: 0.3}}}}
  - {{model: {coding}, parameters: {{weight: 0.5, density: 0.6}}}}
parameters: {{lambda: 1.2}}
""", "stats"),
    "della": ("""merge_method: della
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 1.0, density: 0.5, epsilon: 0.1}}}}
  - {{model: {coding}, parameters: {{weight: 0.6, density: 0.4, epsilon: 0.2}}}}
""", "stats"),
    "della_linear": ("""merge_method: della_linear
base_model: {base}
models:
  - {{model: {math}, parameters: {{weight: 0.7, density: 0.6}}}}
  - {{model: {coding}, parameters: {{weight: 0.4, density: 0.5}}}}
parameters: {{epsilon: 0.15, rescale: false}}
""", "stats"),
}

# name: (our method, hyperparameters, experts, exclusions, how to compare) — merged by us, exported, run by mergekit
EXPORTS = {
    "soup": ("soup", {}, 3, (), "exact"),  # a soup averages every tensor whatever the exclusions
    "task_arithmetic": ("task_arithmetic", {"scaling": 0.7}, 3, DEFAULT_EXCLUDE, "exact"),
    "ties": ("ties", {"scaling": 0.9, "density": 0.3, "scope": "tensor"}, 3, DEFAULT_EXCLUDE, "exact"),
    "ties_sum": ("ties", {"scaling": 0.9, "density": 0.3, "scope": "tensor", "merge_func": "sum"}, 3, DEFAULT_EXCLUDE,
                 "exact"),  # the study code's sum of the agreeing entries: mergekit's ties with normalize off
    "breadcrumbs": ("breadcrumbs", {"scaling": 0.8, "density": 0.6, "gamma": 0.05, "scope": "tensor"}, 3,
                    DEFAULT_EXCLUDE, "exact"),
    "della": ("della", {"scaling": 0.6, "density": 1.0}, 3, DEFAULT_EXCLUDE, "exact"),
    "slerp": ("slerp", {"t": 0.3}, 2, (), "exact"),
    "model_stock": ("model_stock", {}, 3, (), "exact"),
    "linear": ("linear", {"weights": "math=0.5,coding=0.2,safety=0.3"}, 3, (), "exact"),
    "mergekit_gta": ("mergekit_gta", {"sparsify": "magnitude_outliers", "consensus": "sum", "normalize": True,
                                      "weights": "math=1.0,coding=0.3", "densities": "math=0.5,coding=0.7"}, 2,
                     DEFAULT_EXCLUDE, "exact"),
    "dare": ("dare", {"scaling": 0.8, "p": 0.6}, 2, DEFAULT_EXCLUDE, "stats"),
}


@pytest.fixture(scope="module")
def mergekit():
    from mergebench.merging.mergekit_venv import MergekitUnavailable, mergekit_yaml

    try:
        return mergekit_yaml()
    except MergekitUnavailable as exc:
        pytest.skip(f"mergekit 0.1.5 unavailable: {exc}")


def folders(tiny_llama, tiny_experts) -> dict[str, str]:
    return {"base": str(tiny_llama), **{domain: str(path) for domain, path in tiny_experts.items()}}


@pytest.fixture(scope="module")
def runs(mergekit, tiny_llama, tiny_experts, tmp_path_factory):
    """Every comparison's pair of folders: (ours, mergekit's), mergekit's all made in one process."""
    from mergebench.merging.mergekit_venv import run_configs

    root = tmp_path_factory.mktemp("agreement")
    jobs, pairs = [], {}
    for name, (template, _) in CONFIGS.items():
        config = root / f"in-{name}.yml"
        config.write_text(template.format(**folders(tiny_llama, tiny_experts)))
        assert main(["merge", "--mergekit-config", str(config), "--out", str(root / f"ours-in-{name}")]) == 0
        jobs.append((config, root / f"mergekit-in-{name}"))
        pairs[f"in-{name}"] = (root / f"ours-in-{name}", root / f"mergekit-in-{name}")
    for name, (method, params, count, exclude, _) in EXPORTS.items():
        ours = root / f"ours-out-{name}"
        spec = plugin_manager.registries().methods.get(method)
        merge_checkpoints(spec, params, tiny_llama, dict(list(tiny_experts.items())[:count]), ours,
                          context=MergeContext(exclude=tuple(exclude)))
        jobs.append((ours / "mergekit_config.yml", root / f"mergekit-out-{name}"))
        pairs[f"out-{name}"] = (ours, root / f"mergekit-out-{name}")
    run_configs(mergekit, jobs)
    return pairs


def assert_same(ours: dict, theirs: dict, label: str) -> None:
    assert set(ours) == set(theirs), f"{label}: tensor names differ"
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=f"{label}: {name}")


def delta_statistics(merged: dict, base: dict) -> dict[str, float]:
    """Kept fraction, L1 norm, mean and variance of the merged task vector over every tensor."""
    deltas = torch.cat([(merged[n].float() - base[n].float()).reshape(-1) for n in sorted(base)])
    return {"n": deltas.numel(), "kept": float((deltas != 0).float().mean()), "l1": float(deltas.abs().sum()),
            "mean": float(deltas.mean()), "var": float(deltas.var())}


def assert_same_statistics(ours: dict, theirs: dict, base: dict, label: str) -> None:
    a, b = delta_statistics(ours, base), delta_statistics(theirs, base)
    n = a["n"]
    kept_noise = math.sqrt(2 * a["kept"] * (1 - a["kept"]) / n)  # two independent binomial draws
    assert abs(a["kept"] - b["kept"]) < 6 * kept_noise + 1e-9, f"{label}: kept fraction {a['kept']:.4f} vs {b['kept']:.4f}"
    assert abs(a["l1"] - b["l1"]) / b["l1"] < 0.02, f"{label}: L1 norm of the merged delta {a['l1']:.4g} vs {b['l1']:.4g}"
    assert abs(a["var"] - b["var"]) / b["var"] < 0.04, f"{label}: variance {a['var']:.4g} vs {b['var']:.4g}"
    assert abs(a["mean"] - b["mean"]) < 6 * math.sqrt(2 * b["var"] / n), f"{label}: mean {a['mean']:.3g} vs {b['mean']:.3g}"
    assert 0 < a["kept"] < 1, f"{label}: nothing was dropped, so the statistics compare nothing random"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_mergekit_config_runs_here_as_in_mergekit(name, runs, tiny_llama):
    ours, theirs = (load_tensors(p) for p in runs[f"in-{name}"])
    if CONFIGS[name][1] == "exact":
        assert_same(ours, theirs, name)
    else:
        assert_same_statistics(ours, theirs, load_tensors(tiny_llama), name)


@pytest.mark.parametrize("name", list(EXPORTS))
def test_our_exported_config_run_by_mergekit_reproduces_our_merge(name, runs, tiny_llama):
    ours_dir, theirs_dir = runs[f"out-{name}"]
    ours, theirs = load_tensors(ours_dir), load_tensors(theirs_dir)
    if EXPORTS[name][4] == "exact":
        assert_same(ours, theirs, name)
    else:
        assert_same_statistics(ours, theirs, load_tensors(tiny_llama), name)
    if EXPORTS[name][3]:  # the exclusions became weight-0 filters: the base's embeddings and lm_head, in both
        base = load_tensors(tiny_llama)
        for tensor in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(theirs[tensor], base[tensor]), f"{name}: mergekit changed excluded {tensor}"
