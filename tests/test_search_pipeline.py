"""The hyperparameter search inside the pipeline, on the tiny suite: in-memory merges, cached, honest."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.case import Case
from mergebench.errors import UsageError
from mergebench.pipeline import Pipeline, RunContext
from mergebench.search.stage import surrogates as validation_surrogates


@pytest.fixture
def pipeline(tmp_path):
    return Pipeline(RunContext(cache=ArtifactCache(tmp_path / "cache"), device="cpu", search="grid"), plugin_manager.registries())


def test_grid_and_halving_pick_the_same_point_and_are_cached(pipeline):
    registries = pipeline.registries
    model, method = registries.models.get("tiny-llama"), registries.methods.get("task_arithmetic")
    grid_best, grid_seconds = pipeline.search(model, method)
    again, _ = pipeline.search(model, method)
    assert again == grid_best and pipeline.cache.events[-1].hit
    halving = Pipeline(replace(pipeline.context, search="halving"), registries)
    halving_best, _ = halving.search(model, method)
    assert halving_best == grid_best
    trials = json.loads(next((pipeline.cache.root / "search").glob("*/search.json")).read_text())["trials"]
    assert len(trials) == 10 and grid_seconds > 0


def test_the_searched_objective_equals_evaluating_the_written_checkpoint(pipeline):
    """Scores from the in-memory merge are the scores of the checkpoint the merge stage writes."""
    registries = pipeline.registries
    model, method = registries.models.get("tiny-llama"), registries.methods.get("task_arithmetic")
    best, _ = pipeline.search(model, method)
    (search_dir,) = (pipeline.cache.root / "search").iterdir()
    trials = json.loads((search_dir / "search.json").read_text())["trials"]
    chosen = next(t for t in trials if t["params"] == best)
    merged, _ = pipeline.merged(model, method, best)
    base = pipeline.base(model)
    experts = pipeline.experts(model, base)
    ratios = []
    for task in validation_surrogates(pipeline.registries, model):
        merged_score = pipeline.evaluate(merged, task).score
        expert_score = pipeline.evaluate(experts[task.domain], task).score
        ratios.append(expert_score / merged_score)  # bits per byte: lower is better
    assert chosen["objective"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)


def test_a_case_with_search_records_validation_time_and_the_chosen_params(pipeline):
    result = pipeline.run_case(Case("tiny-llama", "ties", "toy_math", (("density", 0.2),)))
    assert result.validation_seconds > 0
    assert result.params["density"] == 0.2 and result.params["scaling"] in [round(0.1 * i, 1) for i in range(1, 11)]


def test_a_model_without_surrogates_cannot_be_searched(pipeline):
    import dataclasses

    gemma = pipeline.registries.models.get("gemma-2-2b")
    assert [t.name for t in validation_surrogates(pipeline.registries, gemma)] == [
        "val_ifeval_like", "val_mmlu_stem", "val_conala_like", "val_lambada", "val_wildjailbreak"]
    leaderboard_only = dataclasses.replace(gemma, suites=frozenset({"leaderboard"}))
    with pytest.raises(UsageError, match="no validation task .* covers 'gemma-2-2b'"):
        validation_surrogates(pipeline.registries, leaderboard_only)


def test_every_registered_validation_surrogate_can_serve_the_search(pipeline):
    """The search scores surrogates in item ranges; one that cannot would stop every search of its suite."""
    surrogates = [spec for spec in pipeline.registries.tasks.specs() if spec.role == "validation"]
    assert {"val_wildjailbreak", "val_ifeval_like_mini"} <= {spec.name for spec in surrogates}
    cannot = [spec.name for spec in surrogates if not spec.load().supports_start]
    assert cannot == []


def test_a_model_that_cannot_tell_its_rows_apart_scores_points_one_at_a_time_alike(pipeline):
    """Shared evaluation needs a RowTrackingModel; any other model gets each point's state dict, the same scores."""
    from mergebench.evaluation.api import LanguageModel
    from mergebench.evaluation.hf import HFLanguageModel
    from mergebench.merging.api import MergeContext
    from mergebench.search.objective import UNITS, MergeObjective, Surrogate

    class Plain(LanguageModel):
        def __init__(self, lm):
            self.lm, self.model, self.name = lm, lm.model, lm.name

        has_chat_template = property(lambda self: self.lm.has_chat_template)

        def chat_prompt(self, messages):
            return self.lm.chat_prompt(messages)

        def generate(self, requests):
            return self.lm.generate(requests)

        def loglikelihood(self, requests):
            return self.lm.loglikelihood(requests)

    registries = pipeline.registries
    model, method = registries.models.get("tiny-llama"), registries.methods.get("task_arithmetic")
    base = pipeline.base(model)
    experts = pipeline.experts(model, base)
    tasks = validation_surrogates(pipeline.registries, model)
    surrogates = [Surrogate(t, pipeline.evaluate(experts[t.domain], t).n, 1.0) for t in tasks]

    def objective(wrap):
        return MergeObjective(method, base.path, {d: r.path for d, r in experts.items()}, MergeContext(), surrogates,
                              make_task=lambda spec, limit: spec.load()(spec, pipeline.context, limit=limit),
                              load_model=lambda: wrap(HFLanguageModel.from_pretrained(base.path, batch_size=4)))

    points = [{"scaling": 0.5}, {"scaling": 1.0}]
    shared, alone = objective(lambda lm: lm), objective(Plain)
    together, one_by_one = shared.scores(points, 0, UNITS), alone.scores(points, 0, UNITS)
    for mine, theirs in zip(together, one_by_one):  # one call for all surrogates packs rows differently: float noise
        assert mine.keys() == theirs.keys() and all(mine[k] == pytest.approx(theirs[k], rel=1e-5) for k in mine)
    assert shared._batch is not None and alone._batch is None
