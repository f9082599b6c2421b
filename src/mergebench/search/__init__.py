"""The hyperparameter validation search: which point of a method's grid to merge with.

The study tunes each method's coefficients and sparsity on validation surrogates (Appendix B.2,
Table 7) and finds that validation, not the merge, dominates the cost of TIES and DARE (30 grid
points each). The parts of one search, each behind its own interface:

* :mod:`~mergebench.search.strategies`: which points are scored on which items (the full grid,
  or successive halving); a strategy sees only an :class:`~mergebench.search.strategies.Objective`.
* :mod:`~mergebench.search.plans`: in what order a method's grids are searched (Consensus TA: each
  task's λ_c on its own surrogate, then λ), each stage with the strategy.
* :mod:`~mergebench.search.objective`: what a point scores, merged in memory and evaluated on
  item ranges of the validation surrogates (log-likelihood items shortest first), relative to
  the domain experts.
* :mod:`~mergebench.search.grid_merge`: many points of one method merged on inputs read once.
* :mod:`~mergebench.search.shared_decoding`: many ``base + λ·Δ`` points evaluated together,
  their rows in one batch (:mod:`~mergebench.search.row_updates`) and their tasks' calls
  gathered round by round (:mod:`~mergebench.search.rounds`).

:func:`run_search` runs one search from its inputs; the pipeline's search stage caches its result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mergebench.search.objective import MergeObjective, Surrogate
from mergebench.search.strategies import SearchResult, strategy

if TYPE_CHECKING:
    from mergebench.evaluation.api import Task
    from mergebench.merging.api import MergeContext
    from mergebench.specs import MethodSpec, SearchPlan, TaskSpec


def run_search(strategy_name: str, method: "MethodSpec", points: Sequence[Mapping[str, Any]], *, base_dir: Path,
               expert_dirs: Mapping[str, Path], context: "MergeContext", surrogates: Sequence[Surrogate],
               make_task: Callable[["TaskSpec", int], "Task"], model_name: str, batch_size: int,
               plan: "SearchPlan | None" = None, fixed: Mapping[str, Any] | None = None) -> SearchResult:
    """Search ``points`` of ``method`` with the strategy ``strategy_name`` (``grid``, ``halving``); the result names the best.

    With a ``plan`` (:mod:`mergebench.search.plans`) the points come from the plan's stages instead,
    each searched with the same strategy; ``fixed`` holds the values no stage may change.

    ``make_task(spec, limit)`` builds a surrogate's task on its first ``limit`` items. The points'
    weights are written into one copy of the base, loaded in this process (Hugging Face backend,
    on ``context.device``) when the first point is scored.
    """

    def load_model():
        from mergebench.evaluation.hf import HFLanguageModel

        return HFLanguageModel.from_pretrained(base_dir, name=model_name, batch_size=batch_size, device=context.device)

    objective = MergeObjective(method, base_dir, expert_dirs, context, surrogates, make_task=make_task, load_model=load_model)
    if plan is not None:
        from mergebench.search.plans import per_task

        return per_task(strategy(strategy_name), method, plan, dict(fixed or {}), objective)
    return strategy(strategy_name).run(points, objective)
