"""Search plans: in what order a method's grids are searched, when not as one product.

The product of every grid on every surrogate is the default (:func:`strategies.grid_points`). A
method may declare another plan on its spec (:class:`~mergebench.specs.SearchPlan`); the one here
is Consensus TA's as its paper runs it (the study's Appendix C.2): each task's λ_c is tuned on that
task's surrogate alone, scoring the model that keeps only the task's own TALL mask on τ_MTL, and
then λ is tuned with every task's λ_c in place: 5 × 5 + 10 = 35 runs instead of 50. Each stage runs
the chosen strategy (grid or successive halving); the result records every stage.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from mergebench.search.strategies import SearchResult, Strategy, grid_points
from mergebench.specs import MethodSpec, SearchPlan


def plan_applies(spec: MethodSpec, params: Mapping[str, Any], fixed: Mapping[str, Any]) -> SearchPlan | None:
    """The method's plan when its ``search_plan`` asks for it and nothing fixes what the plan would tune."""
    plan = spec.search_plan
    if plan is None or params.get("search_plan", "per_task") != "per_task":
        return None
    if plan.param in fixed or plan.per_task_param in fixed:
        return None  # a fixed λ_c (or set of them) leaves only the product of the other grids
    return plan


def per_task(chosen: Strategy, spec: MethodSpec, plan: SearchPlan, fixed: Mapping[str, Any], objective) -> SearchResult:
    """Tune ``plan.param`` per domain on that domain's surrogates, then the other grids on all of them."""
    began = time.perf_counter()
    grid = spec.param(plan.param).grid
    picks: dict[str, Any] = {}
    stages, trials, units = [], [], 0
    for domain in objective.domains():
        points = [{**fixed, plan.param: value, plan.isolate: domain, "scaling": 1.0} for value in grid]
        found = chosen.run(points, objective.only(domain))
        objective.release(points)  # this stage's merged task vectors are not needed again
        picks[domain] = found.best[plan.param]
        stages.append({"stage": f"{plan.param} of {domain}", **found.as_dict()})
        trials += found.trials
        units += found.item_evaluations
    chosen_values = ",".join(f"{domain}={value}" for domain, value in picks.items())
    rest = grid_points(spec, {**fixed, plan.param: spec.param(plan.param).default, plan.per_task_param: chosen_values})
    found = chosen.run(rest, objective)
    stages.append({"stage": "the other grids", **found.as_dict()})
    return SearchResult(chosen.name, found.best, trials + found.trials, time.perf_counter() - began,
                        units + found.item_evaluations, plan="per_task", stages=stages)
