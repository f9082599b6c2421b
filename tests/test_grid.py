"""The validation-time grid API: one read of the inputs, state dicts equal to the written checkpoints."""

from __future__ import annotations

import pytest
import torch

from mergebench import plugin_manager
from mergebench.errors import UsageError
from mergebench.merging.api import MergeContext
from mergebench.merging.engine import merge_checkpoints
from mergebench.search.grid_merge import merge_grid
from mergebench.search.strategies import grid_points
from tests.helpers import load_tensors


def spec(name):
    return plugin_manager.registries().methods.get(name)


@pytest.mark.parametrize("name, points", [
    ("ties", [{"density": d, "scaling": s} for d in (0.1, 0.3) for s in (0.5, 1.0)]),
    ("dare", [{"p": 0.5, "scaling": s} for s in (0.2, 0.9)]),
    ("model_stock", [{}]),
])
def test_every_grid_point_equals_the_checkpoint_merge_checkpoints_writes(name, points, tiny_llama, tiny_experts, tmp_path):
    results = list(merge_grid(spec(name), points, tiny_llama, tiny_experts, context=MergeContext(seed=5)))
    assert [r[0] for r in results] == [spec(name).resolve_params(p) for p in points]
    for i, (params, state) in enumerate(results):
        merge_checkpoints(spec(name), params, tiny_llama, tiny_experts, tmp_path / str(i), context=MergeContext(seed=5))
        written = load_tensors(tmp_path / str(i))
        assert set(state) == set(written)
        for tensor_name, tensor in written.items():
            assert torch.equal(state[tensor_name], tensor), (params, tensor_name)


def test_points_differing_only_in_scaling_share_one_delta(tiny_llama, tiny_experts, monkeypatch):
    from mergebench_builtins.methods.gta import GeneralizedTaskArithmetic

    calls = []
    original = GeneralizedTaskArithmetic.merge_delta
    monkeypatch.setattr(GeneralizedTaskArithmetic, "merge_delta",
                        lambda self, n, b, e: calls.append(n) or original(self, n, b, e))
    points = [{"density": 0.2, "scaling": s} for s in (0.1, 0.2, 0.3, 0.4)]
    states = list(merge_grid(spec("ties"), points, tiny_llama, tiny_experts))
    assert len(states) == 4 and len(calls) == len(set(calls))  # every tensor merged once for four λ


def test_a_bad_point_fails_before_anything_is_read(tiny_llama, tmp_path):
    with pytest.raises(UsageError, match=r"density=2.0 is out of range"):
        next(merge_grid(spec("ties"), [{"density": 0.2}, {"density": 2.0}], tiny_llama, {"math": tmp_path / "missing"}))


def test_the_grid_merger_validates_points_before_it_reads_its_inputs(tiny_llama, tmp_path):
    from mergebench.search.grid_merge import GridMerger

    merger = GridMerger(spec("ties"), tiny_llama, {"math": tmp_path / "missing"})  # reads nothing yet
    with pytest.raises(UsageError, match=r"density=2.0 is out of range"):
        merger.scaled([{"density": 0.2}, {"density": 2.0}])


def test_grid_points_enumerate_table_7():
    assert len(grid_points(spec("ties"))) == 30
    assert len(grid_points(spec("task_arithmetic"))) == 10
    assert len(grid_points(spec("consensus"))) == 50  # 5 λ_c × 10 λ jointly (the study tunes them in turn: 35 runs)
    assert len(grid_points(spec("dataless_localize_stitch"))) == 5
    assert grid_points(spec("soup")) == [{}]


def test_a_group_task_vector_is_kept_for_later_rounds(tiny_llama, tiny_experts):
    """Asking again for a point of a group already merged reuses its task vector and gives the same state."""
    from mergebench.search.grid_merge import GridMerger

    merger = GridMerger(spec("ties"), tiny_llama, tiny_experts)
    (_, first), = merger.merge([{"density": 0.2, "scaling": 0.5}])
    assert len(merger._deltas) == 1
    (_, again), = merger.merge([{"density": 0.2, "scaling": 0.5}])
    (_, other), = merger.merge([{"density": 0.2, "scaling": 1.0}])
    assert len(merger._deltas) == 1
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(first[name], again[name])
    base = load_tensors(tiny_llama)[name]
    torch.testing.assert_close(other[name] - base, 2 * (first[name] - base), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["ties", "soup"])
def test_the_caller_gets_each_state_with_torch_threads_restored(tiny_llama, tiny_experts, method):
    """The search evaluates each state as it comes: not with torch held at one thread for merging."""
    torch.set_num_threads(2)
    seen = [torch.get_num_threads() for _ in merge_grid(spec(method), grid_points(spec(method))[:2], tiny_llama,
                                                        tiny_experts, context=MergeContext(threads=2))]
    assert seen and set(seen) == {2}


@pytest.mark.parametrize("name, points", [
    ("ties", [{"density": d, "scaling": s} for d in (0.1, 0.2, 0.3) for s in (0.4, 1.0)]),
    ("breadcrumbs", [{"density": d, "gamma": g, "scope": "global", "scaling": 0.5} for d in (0.8, 0.9) for g in (0.01, 0.02)]),
])
def test_a_rounds_groups_share_one_threshold_pass_and_merge_as_each_alone(name, points, tiny_llama, tiny_experts,
                                                                        tmp_path, monkeypatch):
    """Global thresholds of every density (and outlier cut) come from one histogram pass; points equal their checkpoints."""
    from mergebench.merging.tensors import scaled_sum
    from mergebench.merging.topk import MagnitudeSelector
    from mergebench.search.grid_merge import GridMerger

    histograms = []
    original = MagnitudeSelector.histogram
    monkeypatch.setattr(MagnitudeSelector, "histogram", staticmethod(lambda x: histograms.append(1) or original(x)))
    merger = GridMerger(spec(name), tiny_llama, tiny_experts)
    scaled = merger.scaled(points)
    groups = {group for _, group, _ in scaled}
    merged_names = next(iter(merger._deltas.values()))[0]
    assert len(groups) == len(points) // (2 if name == "ties" else 1)
    assert len(histograms) == len(merged_names) * len(tiny_experts)  # once per tensor and expert, not per group

    base = load_tensors(tiny_llama)
    for i, (params, group, scale) in enumerate(scaled):
        merge_checkpoints(spec(name), params, tiny_llama, tiny_experts, tmp_path / str(i))
        written = load_tensors(tmp_path / str(i))
        for tensor_name in merged_names:
            mine = scaled_sum(base[tensor_name].float(), merger.delta(group)[tensor_name], scale).to(base[tensor_name].dtype)
            assert torch.equal(mine, written[tensor_name]), (params, tensor_name)


@pytest.mark.parametrize("name", [s.name for s in plugin_manager.registries().methods.specs() if len(grid_points(s)) > 1])
def test_every_point_of_a_methods_declared_grid_is_one_the_method_accepts(name):
    """A grid point the method refuses would stop `--mb-search grid|halving` before anything is scored."""
    from mergebench.merging.engine import build_method

    method = spec(name)
    domains = tuple(f"d{i}" for i in range(max(method.min_experts, 5 if method.max_experts is None else method.max_experts)))
    context = MergeContext(domains=domains, statistics={d: f"stats/{d}" for d in domains})
    for point in grid_points(method):
        build_method(method, point, context, len(domains))  # raises UsageError for a point it refuses
