"""Our methods agree with mergekit 0.1.5 to float32 tolerance on the same inputs (per-tensor scope).

mergekit pins its own dependency versions, so it lives in a separate virtualenv and is run
through its CLI: set ``MERGEBENCH_MERGEKIT`` to that venv's ``mergekit-yaml``::

    python3 -m venv /opt/mergekit && /opt/mergekit/bin/pip install torch==2.13.0 mergekit==0.1.5
    MERGEBENCH_MERGEKIT=/opt/mergekit/bin/mergekit-yaml pytest tests/test_mergekit_agreement.py

Without it the tests are skipped, saying so. They are ``slow``: each mergekit run starts a
Python with torch and transformers (about 10 s here), seven runs in all, once per session.

DELLA and DARE are random in both tools with different generators, so DELLA is compared at
``density=1`` (sign election, disjoint mean and λ; our MAGPRUNE probabilities are checked
against their formula in ``test_methods.py``) and DARE not at all.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from mergebench import plugin_manager
from mergebench.merging.api import MergeContext
from mergebench.merging.engine import merge_checkpoints
from tests.helpers import load_tensors

MERGEKIT = os.environ.get("MERGEBENCH_MERGEKIT", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MERGEKIT and Path(MERGEKIT).is_file()),
                       reason="set MERGEBENCH_MERGEKIT to a mergekit 0.1.5 venv's mergekit-yaml to compare with mergekit"),
]

# name: (our method, our params, number of experts, mergekit method, per-model params, global params, base is first expert)
CASES = {
    "linear": ("soup", {}, 3, "linear", {"weight": 1.0}, {"normalize": True}, None),
    "task_arithmetic": ("task_arithmetic", {"scaling": 0.7}, 3, "task_arithmetic", {"weight": 1.0}, {"lambda": 0.7}, "base"),
    "ties": ("ties", {"scaling": 0.9, "density": 0.3, "scope": "tensor"}, 3, "ties",
             {"weight": 1.0, "density": 0.3}, {"lambda": 0.9}, "base"),
    "breadcrumbs": ("breadcrumbs", {"scaling": 0.8, "density": 0.6, "gamma": 0.05, "scope": "tensor"}, 3, "breadcrumbs",
                    {"weight": 1.0, "density": 0.6, "gamma": 0.05}, {"lambda": 0.8}, "base"),
    "della": ("della", {"scaling": 0.6, "density": 1.0}, 3, "della", {"weight": 1.0, "density": 1.0, "epsilon": 0.1},
              {"lambda": 0.6}, "base"),
    "slerp": ("slerp", {"t": 0.3}, 2, "slerp", {}, {"t": 0.3}, "first"),
    "model_stock": ("model_stock", {}, 3, "model_stock", {}, {}, "base"),
}


def mergekit_config(method, per_model, shared, base_role, base_dir, experts) -> str:
    lines = [f"merge_method: {method}", "dtype: float32"]
    if base_role == "base":
        lines.append(f"base_model: {base_dir}")
    elif base_role == "first":
        lines.append(f"base_model: {experts[0]}")
    lines.append("models:")
    for expert in experts:
        lines.append(f"  - model: {expert}")
        if per_model:
            lines.append("    parameters: {" + ", ".join(f"{k}: {v}" for k, v in per_model.items()) + "}")
    if shared:
        lines.append("parameters: {" + ", ".join(f"{k}: {v}" for k, v in shared.items()) + "}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def mergekit_outputs(tiny_llama, tiny_experts, tmp_path_factory):
    root = tmp_path_factory.mktemp("mergekit")
    outputs = {}
    for case, (_, _, count, method, per_model, shared, base_role) in CASES.items():
        experts = list(tiny_experts.values())[:count]
        config = root / f"{case}.yml"
        config.write_text(mergekit_config(method, per_model, shared, base_role, tiny_llama, experts))
        done = subprocess.run([MERGEKIT, str(config), str(root / case), "--quiet"], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, f"mergekit {case} failed:\n{done.stderr[-2000:]}"
        outputs[case] = load_tensors(root / case)
    return outputs


@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_mergekit(case, mergekit_outputs, tiny_llama, tiny_experts, tmp_path):
    ours_name, params, count, *_ = CASES[case]
    experts = dict(list(tiny_experts.items())[:count])
    spec = plugin_manager.registries().methods.get(ours_name)
    # mergekit merges every tensor: no exclusions, so embeddings and lm_head are compared too
    merge_checkpoints(spec, params, tiny_llama, experts, tmp_path / "ours", context=MergeContext(exclude=()))
    ours, theirs = load_tensors(tmp_path / "ours"), mergekit_outputs[case]
    assert set(ours) == set(theirs)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=f"{case}: {name}")
