"""Consensus TA's search as its paper runs it: each task's λ_c on its own surrogate, then λ (35 runs, not 50)."""

from __future__ import annotations

import json

import pytest

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.pipeline import Pipeline, RunContext
from mergebench.search.plans import per_task, plan_applies
from mergebench.search.strategies import GridSearch, SuccessiveHalving

DOMAINS = ("instruction", "math", "multilingual", "coding", "safety")
BEST_LAMBDA_C = {"instruction": 0.2, "math": 0.6, "multilingual": 0.4, "coding": 0.3, "safety": 0.5}


class FakeObjective:
    """Per-domain objectives peaked at BEST_LAMBDA_C; the whole objective peaked at λ = 0.7."""

    n_items = 3

    def __init__(self, domain=None, log=None):
        self.domain, self.log = domain, log if log is not None else []

    def domains(self):
        return list(DOMAINS)

    def only(self, domain):
        return FakeObjective(domain, self.log)

    def release(self, points):
        self.log.append(("release", len(points)))

    def scores(self, points, start, stop):
        out = []
        for p in points:
            self.log.append((self.domain, dict(p)))
            if self.domain:
                assert p["isolate"] == self.domain and p["scaling"] == 1.0
                value = -abs(p["mask_lambda"] - BEST_LAMBDA_C[self.domain])
            else:
                assert p["mask_lambdas"] == ",".join(f"{d}={v}" for d, v in BEST_LAMBDA_C.items())
                value = -abs(p["scaling"] - 0.7)
            out.append({"t": [value] * (stop - start)})
        return out

    def combine(self, scores):
        return sum(scores["t"]) / len(scores["t"])


def consensus():
    return plugin_manager.registries().methods.get("consensus")


@pytest.mark.parametrize("chosen", [GridSearch(), SuccessiveHalving()])
def test_each_tasks_lambda_c_then_lambda(chosen):
    objective = FakeObjective()
    result = per_task(chosen, consensus(), consensus().search_plan, {}, objective)
    assert result.plan == "per_task" and result.best["scaling"] == 0.7
    assert result.best["mask_lambdas"] == "instruction=0.2,math=0.6,multilingual=0.4,coding=0.3,safety=0.5"
    assert [s["stage"] for s in result.stages] == [f"mask_lambda of {d}" for d in DOMAINS] + ["the other grids"]
    if isinstance(chosen, GridSearch):
        assert len(result.trials) == 35  # the paper's count: 5 tasks × 5 λ_c, then 10 λ
    assert objective.log.count(("release", 5)) == 5  # each task stage frees its merged task vectors


def test_the_plan_steps_aside_when_its_parameter_is_fixed_or_the_product_is_asked():
    spec = consensus()
    assert plan_applies(spec, spec.resolve_params({}), {}) is spec.search_plan
    assert plan_applies(spec, spec.resolve_params({"search_plan": "product"}), {}) is None
    assert plan_applies(spec, spec.resolve_params({}), {"mask_lambda": 0.3}) is None
    study = spec.resolve_params({}, "study-code")
    assert plan_applies(spec, study, spec.semantic_params("study-code")) is None  # λ_c is the code's 0.2


@pytest.mark.parametrize("semantics, overrides, plan, trials", [
    ("paper", {}, "per_task", 35),
    ("paper", {"search_plan": "product"}, "product", 50),
    ("study-code", {}, "product", 10),  # λ only: the study's code fixes λ_c = 0.2
])
def test_the_pipelines_consensus_search_records_its_plan(semantics, overrides, plan, trials, tmp_path):
    registries = plugin_manager.registries()
    pipeline = Pipeline(RunContext(cache=ArtifactCache(tmp_path / "cache"), search="grid", semantics=semantics),
                        registries)
    method = registries.methods.get("consensus")
    best, _ = pipeline.search(registries.models.get("tiny-llama"), method,
                              {**method.semantic_params(semantics), **overrides})
    found = json.loads(next((tmp_path / "cache" / "search").glob("*/search.json")).read_text())
    assert found["plan"] == plan and len(found["trials"]) == trials
    assert all(best[k] == v for k, v in found["best"].items())
    assert best["search_plan"] == plan
    if plan == "per_task":
        assert [part.split("=")[0] for part in best["mask_lambdas"].split(",")] == list(DOMAINS)
        assert {s["stage"] for s in found["stages"]} >= {"mask_lambda of math", "the other grids"}
    else:
        assert best["mask_lambdas"] == ""
