"""The search as a pipeline stage: which surrogates score a model, and the cached search artifact.

Cached like every stage: the key holds the merge inputs' keys, the method, its grid, the strategy
(and its schedule when it is not the default), a per-task plan when one applies, how items are
ordered, and the surrogates with their item counts, so a search is found again exactly when it
would compute the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mergebench.cache import ArtifactKey
from mergebench.errors import UsageError
from mergebench.specs import MethodSpec, ModelSpec, TaskSpec

if TYPE_CHECKING:
    from mergebench.pipeline import Pipeline


def surrogates(registries, model: ModelSpec) -> list[TaskSpec]:
    """The validation surrogates of ``model``'s suites for the domains it has experts in."""
    found = [t for t in registries.tasks.specs()
             if t.role == "validation" and t.suites & model.suites and t.domain in model.domains]
    if not found:
        raise UsageError(f"no validation task (role='validation') covers {model.name!r}; "
                         "the search needs surrogates of its suite, or run with --mb-search none")
    return found


def search_stage(pipeline: "Pipeline", model: ModelSpec, method: MethodSpec, fixed: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, Any], float]:
    """Best hyperparameters on the validation surrogates, and the seconds the search took."""
    from mergebench.pipeline import _build_seconds
    from mergebench.search import run_search
    from mergebench.search.objective import GENERATION_FROM, ITEM_ORDER, UNITS, Surrogate
    from mergebench.search.plans import plan_applies
    from mergebench.search.strategies import grid_points, strategy

    context = pipeline.context
    fixed = {k: method.param(k).validate(v) for k, v in (fixed or {}).items()}
    points = grid_points(method, fixed)
    if len(points) <= 1:
        return method.resolve_params(points[0] if points else fixed), 0.0
    plan = plan_applies(method, method.resolve_params(fixed), fixed)
    inputs = pipeline._merge_inputs(model, method, method.resolve_params(fixed))
    tasks = surrogates(pipeline.registries, model)
    references = {t.name: pipeline.evaluate(inputs.experts[t.domain], t) for t in tasks}
    scored = [Surrogate(t, references[t.name].n, references[t.name].score) for t in tasks]
    label = f"search {model.name}/{method.name} ({context.search}, {len(points)} points)"
    key = ArtifactKey.of("search", {
        **inputs.key,
        "points": points,
        "strategy": context.search,
        **({"schedule": schedule} if (schedule := strategy(context.search).key()) else {}),
        **({"plan": "per_task", "fixed": fixed} if plan else {}),
        "item_order": {"units": UNITS, "generation_from": GENERATION_FROM, "tiebreak": "mean_log_soft_values",
                       "items": ITEM_ORDER},
        "surrogates": {t.name: [t.version, references[t.name].n] for t in tasks},
    })

    def build(out: Path) -> None:
        inputs.verify()
        result = run_search(context.search, method, points, base_dir=inputs.base.path,
                            expert_dirs=inputs.expert_dirs, context=inputs.context, surrogates=scored,
                            make_task=lambda spec, limit: spec.load()(spec, context, limit=limit),
                            model_name=f"{model.name}/{method.name} (search)", batch_size=context.batch_size,
                            plan=plan, fixed=fixed)
        (out / "search.json").write_text(json.dumps(result.as_dict(), indent=2, default=str))

    artifact = pipeline.cache.get_or_build(key, build, label=label, on_wait=pipeline._announce(label))
    pipeline._report(label, artifact.hit, artifact.seconds)
    found = json.loads((artifact.path / "search.json").read_text())
    return method.resolve_params(found["best"]), _build_seconds(artifact.path)
