"""Search strategies on an objective with a known optimum; exact cost accounting."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from mergebench.errors import UsageError
from mergebench.evaluation.api import LanguageModel, Loglikelihood, LoglikelihoodRequest, Task
from mergebench.merging.api import MergeContext
from mergebench.search.objective import GENERATION_FROM, UNITS, MergeObjective, Surrogate, index_runs, item_span
from mergebench.search.strategies import GridSearch, SuccessiveHalving, grid_points, soft_key
from mergebench.specs import HyperParam, MethodSpec, TaskSpec


class Quadratic:
    """Per-item score: -(scaling - 0.6)^2 - (density - 0.2)^2 + item noise; optimum (0.6, 0.2)."""

    def __init__(self, n_items: int = 54, noise: float = 0.002) -> None:
        self.n_items = n_items
        self.noise = noise
        self.calls: list[tuple[dict, int, int]] = []

    def scores(self, points, start, stop):
        out = []
        for params in points:
            self.calls.append((dict(params), start, stop))
            value = -(params["scaling"] - 0.6) ** 2 - (params["density"] - 0.2) ** 2
            rng = random.Random(f"{start}")
            out.append({"a": [value + rng.uniform(-self.noise, self.noise) for _ in range(start, stop)]})
        return out

    def combine(self, scores):
        values = scores["a"]
        return sum(values) / len(values)


SPEC = MethodSpec(name="ties_like", impl="x:y", hyperparams=(
    HyperParam("scaling", 1.0, grid=tuple(round(0.1 * i, 1) for i in range(1, 11))),
    HyperParam("density", 0.2, grid=(0.1, 0.2, 0.3)),
    HyperParam("scope", "global"),
))


def test_grid_points_cover_the_declared_grid_with_defaults_for_the_rest():
    points = grid_points(SPEC)
    assert len(points) == 30 and all(p["scope"] == "global" for p in points)
    assert {(p["scaling"], p["density"]) for p in points} == {(round(0.1 * i, 1), d) for i in range(1, 11) for d in (0.1, 0.2, 0.3)}
    assert len(grid_points(SPEC, {"density": 0.3})) == 10


def test_both_strategies_find_the_optimum_and_halving_scores_far_fewer_items():
    grid = GridSearch().run(grid_points(SPEC), Quadratic())
    halving = SuccessiveHalving(eta=3, min_items=2, finalists=None, max_rounds=None).run(grid_points(SPEC), Quadratic())
    assert grid.best["scaling"] == halving.best["scaling"] == 0.6
    assert grid.best["density"] == halving.best["density"] == 0.2
    assert grid.item_evaluations == 30 * 54
    # rounds: 30 points on 2 items, 10 on 6, 3 on 18; the one left would get 54 but is already the pick
    assert SuccessiveHalving(eta=3, min_items=2, finalists=None, max_rounds=None).schedule(30, 54) == [(30, 2), (10, 6), (3, 18)]
    assert halving.item_evaluations == 20 * 2 + 7 * 6 + 3 * 18  # 136 items: 2.5 full evaluations, vs 30


def test_survivors_are_only_scored_on_new_items():
    objective = Quadratic()
    SuccessiveHalving(eta=3, min_items=2, finalists=None, max_rounds=None).run(grid_points(SPEC), objective)
    seen: dict[tuple, int] = {}
    for params, start, stop in objective.calls:
        key = tuple(sorted(params.items()))
        assert start == seen.get(key, 0), "an item range was scored twice"
        seen[key] = stop


def test_one_point_needs_one_full_evaluation():
    result = SuccessiveHalving().run([{"scaling": 0.3, "density": 0.2}], Quadratic(n_items=10))
    assert result.item_evaluations == 10 and result.best == {"scaling": 0.3, "density": 0.2}


class Uneven(Quadratic):
    """Two tasks that map the search's 27 units onto 48 and 8 items, as MergeObjective does."""

    sizes = {"long": 48, "short": 8}
    first_unit = {"long": 0, "short": 0}

    def scores(self, points, start, stop):
        out = []
        for params in points:
            self.calls.append((dict(params), start, stop))
            value = -(params["scaling"] - 0.6) ** 2 - (params["density"] - 0.2) ** 2
            spans = {task: item_span(start, stop, n, self.n_items, self.first_unit[task]) for task, n in self.sizes.items()}
            out.append({task: [value] * (last - first) for task, (first, last) in spans.items()})
        return out

    def combine(self, scores):
        return sum(sum(v) / len(v) for v in scores.values() if v) / 2


def test_units_cover_each_task_in_proportion_rounded_to_the_nearest_item():
    sizes = [8, 24, 32, 48, 12]  # the embedded validation surrogates: 124 items
    first_unit = [item_span(0, 1, n, 27) for n in sizes]
    assert first_unit == [(0, 0), (0, 1), (0, 1), (0, 2), (0, 0)]  # 8/27 and 12/27 of an item round to none
    assert [item_span(1, 3, n, 27) for n in sizes] == [(0, 1), (1, 3), (1, 4), (2, 5), (0, 1)]
    assert [item_span(0, 27, n, 27) for n in sizes] == [(0, n) for n in sizes]
    for n in sizes + [1, 27, 200]:  # consecutive ranges partition the items
        covered = [i for k in range(27) for i in range(*item_span(k, k + 1, n, 27))]
        assert covered == list(range(n))
    for k in range(28):  # k units are k/27 of the items, within half an item per task
        assert abs(sum(b - a for a, b in (item_span(0, k, n, 27) for n in sizes)) - k * 124 / 27) <= len(sizes) / 2


def test_item_ranges_count_search_units_even_when_tasks_have_more_or_fewer_items():
    objective = Uneven(n_items=27)
    result = SuccessiveHalving(finalists=None, max_rounds=None).run(grid_points(SPEC), objective)
    seen: dict[tuple, int] = {}
    for params, start, stop in objective.calls:
        key = tuple(sorted(params.items()))
        assert start == seen.get(key, 0), f"units [{seen.get(key, 0)}, {start}) were skipped or repeated"
        seen[key] = stop
    finalists = [t for t in result.trials if t.items == 9]
    assert len(finalists) == 3 and all(len(t.scores["long"]) == 16 and len(t.scores["short"]) == 3 for t in finalists)
    assert result.item_evaluations == 20 * 1 + 7 * 3 + 3 * 9


def test_units_below_a_tasks_first_unit_cover_none_of_its_items_and_the_range_reaching_it_all_owed():
    ranges = [(0, 1), (1, 3), (3, 9), (9, 27)]  # successive halving's rounds, then the rest
    assert [item_span(a, b, 8, 27, first_unit=9) for a, b in ranges] == [(0, 0), (0, 0), (0, 3), (3, 8)]
    assert [item_span(a, b, 8, 27) for a, b in ranges] == [(0, 0), (0, 1), (1, 3), (3, 8)]
    for n in (1, 8, 12, 200):
        covered = [i for k in range(27) for i in range(*item_span(k, k + 1, n, 27, first_unit=9))]
        assert covered == list(range(n))


def test_even_units_of_54_cover_exactly_the_items_of_the_same_fraction_of_27():
    """Why UNITS could go from 27 to 54 without changing what eta's rounds, the finalists and the grid score."""
    assert UNITS == 54 and GENERATION_FROM == 18
    for n in range(0, 300):
        for a in range(28):
            for b in range(a, 28):
                assert item_span(2 * a, 2 * b, n, 54) == item_span(a, b, n, 27)
                assert item_span(2 * a, 2 * b, n, 54, first_unit=18) == item_span(a, b, n, 27, first_unit=9)


class LateShort(Uneven):
    """``short`` is scored from generated text: its items count from GENERATION_FROM, as MergeObjective maps them."""

    first_unit = {"long": 0, "short": GENERATION_FROM}


def test_generated_items_are_scored_for_the_finalists_only_each_item_once():
    objective = LateShort(n_items=UNITS)
    result = SuccessiveHalving(finalists=None, max_rounds=None).run(grid_points(SPEC), objective)
    rounds = {}
    for trial in result.trials:
        rounds.setdefault(trial.items, []).append(trial)
    assert sorted((items, len(trials)) for items, trials in rounds.items()) == [(2, 20), (6, 7), (18, 3)]
    assert all(t.scores["short"] == [] for t in rounds[2] + rounds[6])
    assert [len(t.scores["short"]) for t in rounds[18]] == [3, 3, 3]  # items [0, 3): round(18 · 8 / 54)
    assert [len(t.scores["long"]) for t in rounds[18]] == [16, 16, 16]
    assert (result.best["scaling"], result.best["density"]) == (0.6, 0.2)


def test_the_default_schedule_scores_every_point_on_one_unit_then_two_finalists_on_a_third():
    objective = LateShort(n_items=UNITS)
    result = SuccessiveHalving().run(grid_points(SPEC), objective)
    assert SuccessiveHalving().schedule(30, UNITS) == [(30, 1), (2, 18)]
    assert sorted(t.items for t in result.trials) == [1] * 28 + [18, 18]
    first = [t for t in result.trials if t.items == 1]
    assert all(len(t.scores["long"]) == 1 and t.scores["short"] == [] for t in first)  # round(1 · 48 / 54) = 1
    assert result.item_evaluations == 30 * 1 + 2 * 17


def test_the_objective_brings_in_surrogates_that_generate_at_generation_from():
    class Probe:
        supports_start = True

        def __init__(self, generates: bool) -> None:
            self.generates = generates

    specs = [TaskSpec(name, impl="unused:Task", domain="math", role="validation") for name in ("cloze", "chat")]
    surrogates = [Surrogate(specs[0], 48, 0.5), Surrogate(specs[1], 8, 0.25)]
    objective = MergeObjective(SPEC, Path("base"), {}, MergeContext(), surrogates,
                               make_task=lambda spec, limit: Probe(spec.name == "chat"), load_model=lambda: None)
    assert objective.first_unit == {"cloze": 0, "chat": GENERATION_FROM} and GENERATION_FROM == 18
    assert [objective.span(surrogates[1], a, b) for a, b in [(0, 1), (1, 2), (2, 6), (6, 18), (18, 54)]] == [
        (0, 0), (0, 0), (0, 0), (0, 3), (3, 8)]
    assert objective.span(surrogates[0], 0, 1) == (0, 1) and objective.span(surrogates[0], 2, 6) == (2, 5)


def test_index_runs_are_the_ascending_ranges_of_consecutive_items():
    assert index_runs([7, 2, 3, 9, 8, 0]) == [(0, 1), (2, 4), (7, 10)]
    assert index_runs([]) == [] and index_runs(range(5)) == [(0, 5)]


# item i of the "cloze" surrogate: a context of CONTEXT[i] characters, one continuation of 1 + i % 2
CONTEXT = [40, 5, 30, 5, 1, 60, 12, 9]


class Cloze(Task):
    """Log-likelihood items of known lengths; an item's score is its index (so scored items can be read back)."""

    supports_start = True

    def evaluate(self, lm):
        items = range(self.start, self.stop)
        requests = [LoglikelihoodRequest("x" * CONTEXT[i], "y" * (1 + i % 2)) for i in items]
        answers = lm.loglikelihood(requests)
        return self.result([float(i) for i in items], [{} for _ in items], soft_values=[0.5 for _ in answers])


class Chat(Cloze):
    generates = True


class Recorder(LanguageModel):
    name = "recorder"
    has_chat_template = False

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def chat_prompt(self, messages):
        raise AssertionError("not used")

    def generate(self, requests):
        raise AssertionError("not used")

    def loglikelihood(self, requests):
        self.calls.append([r.context for r in requests])
        return [Loglikelihood(-1.0, 1, False) for _ in requests]


def ordered_objective(model: LanguageModel) -> tuple[MergeObjective, list[Surrogate]]:
    specs = [TaskSpec(name, impl="unused:Task", domain="math", role="validation") for name in ("cloze", "chat")]
    surrogates = [Surrogate(specs[0], len(CONTEXT), 0.5), Surrogate(specs[1], len(CONTEXT), 0.5)]
    objective = MergeObjective(SPEC, Path("base"), {}, MergeContext(), surrogates, load_model=lambda: model,
                               make_task=lambda spec, limit: (Chat if spec.name == "chat" else Cloze)(spec, None, limit))
    return objective, surrogates


def test_log_likelihood_items_fill_the_units_shortest_first_and_all_units_are_every_item_in_index_order():
    objective, (cloze, chat) = ordered_objective(Recorder())
    # characters: the context once plus the continuation; ties by index
    assert objective.order(cloze) == [4, 1, 3, 7, 6, 2, 0, 5]
    assert objective.order(chat) == list(range(8))  # generated items keep their order (and join at GENERATION_FROM)
    ranges = [(0, 8), (8, 18), (18, 54)]  # units of UNITS = 54
    assert [objective.items(cloze, a, b) for a, b in ranges] == [[4], [1, 3], [0, 2, 5, 6, 7]] == [
        sorted(objective.order(cloze)[slice(*objective.span(cloze, a, b))]) for a, b in ranges]
    assert objective.item_runs(cloze, 18, 54) == [(0, 1), (2, 3), (5, 8)]
    assert objective.items(cloze, 0, 54) == list(range(8)) and objective.items(chat, 6, 54) == list(range(8))


def test_a_forwarding_model_renders_and_reads_off_the_model_it_stands_in_for():
    from mergebench.evaluation.api import ForwardingModel

    class Chat(Recorder):
        name, has_chat_template, tokenizer = "chat-model", True, "its tokenizer"

        def chat_prompt(self, messages):
            return "<user>" + messages[0]["content"]

    class Silent(ForwardingModel):
        def generate(self, requests):
            return []

        def loglikelihood(self, requests):
            return []

    stand_in = Silent(Chat())
    assert (stand_in.name, stand_in.has_chat_template, stand_in.tokenizer) == ("chat-model", True, "its tokenizer")
    assert stand_in.chat_prompt([{"role": "user", "content": "hi"}]) == "<user>hi"


def test_index_order_is_the_tasks_own_and_an_unknown_order_is_refused():
    specs = [TaskSpec("cloze", impl="unused:Task", domain="math", role="validation")]
    objective = MergeObjective(SPEC, Path("base"), {}, MergeContext(), [Surrogate(specs[0], 8, 0.5)],
                               make_task=lambda spec, limit: Cloze(spec, None, limit), load_model=Recorder,
                               item_order="index")
    assert objective.items(objective.surrogates[0], 8, 18) == [1, 2]
    with pytest.raises(UsageError, match="unknown item order 'longest'; one of shortest_first, index"):
        MergeObjective(SPEC, Path("base"), {}, MergeContext(), [], make_task=None, load_model=Recorder,
                       item_order="longest")


def test_the_objective_scores_exactly_the_ordered_items_each_run_once():
    model = Recorder()
    objective, _ = ordered_objective(model)
    scored = objective._score(model, 18, 54)
    assert scored["cloze"] == [0.0, 2.0, 5.0, 6.0, 7.0] and scored[soft_key("cloze")] == [0.5] * 5
    assert scored["chat"] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert model.calls[-4:-1] == [["x" * 40], ["x" * 30], ["x" * 60, "x" * 12, "x" * 9]]  # runs [0, 1), [2, 3), [5, 8)
    assert objective._score(model, 0, 1) == {"cloze": [], soft_key("cloze"): [], "chat": [], soft_key("chat"): []}


def test_halving_stops_when_the_items_run_out_and_keeps_a_lone_point_whole():
    halving = SuccessiveHalving(eta=3, finalists=None)
    assert halving.schedule(30, 3) == [(30, 1), (10, 3)]  # only two prefix lengths: the last round decides
    assert halving.schedule(3, 27) == [(3, 9)]  # then one left, which would get 27
    assert halving.schedule(1, 27) == [(1, 27)]
    assert halving.schedule(9, 27) == [(9, 3), (3, 9)]
    assert SuccessiveHalving(eta=2, max_rounds=None).schedule(8, 8) == [(8, 1), (4, 2), (2, 4)]


def test_finalists_cap_the_last_round_and_the_schedule_is_part_of_the_key():
    every_round = {"max_rounds": None}
    assert SuccessiveHalving(finalists=None, **every_round).schedule(30, 27) == [(30, 1), (10, 3), (3, 9)]  # eta's own
    assert SuccessiveHalving(**every_round).schedule(30, 27) == [(30, 1), (10, 3), (2, 9)]  # two finalists
    assert SuccessiveHalving(finalists=5, **every_round).schedule(30, 27) == [(30, 1), (10, 3), (3, 9)]  # a cap, not a floor
    assert SuccessiveHalving(finalists=2).schedule(3, 27) == [(3, 9)]  # one round: every point scored, none ranked
    result = SuccessiveHalving(finalists=2, **every_round).run(grid_points(SPEC), Quadratic(n_items=27))
    finalists = [t for t in result.trials if t.items == 9]
    assert len(finalists) == 2 and result.best in [t.params for t in finalists]
    assert result.item_evaluations == 20 * 1 + 8 * 3 + 2 * 9
    assert SuccessiveHalving(finalists=None).key() == {"finalists": None, "max_rounds": 2}  # another search
    assert SuccessiveHalving(eta=4, min_items=2).key() == {"eta": 4, "min_items": 2, "max_rounds": 2}
    # every round keeps the key it had before max_rounds existed, and the grid has none
    assert SuccessiveHalving(**every_round).key() == GridSearch().key() == {}


def test_the_default_schedule_goes_from_the_first_round_straight_to_the_two_finalists():
    assert SuccessiveHalving().schedule(30, 27) == [(30, 1), (2, 9)]
    assert SuccessiveHalving().key() == {"max_rounds": 2}  # not the three-round search cached before it
    result = SuccessiveHalving().run(grid_points(SPEC), Quadratic(n_items=27))
    assert sorted(t.items for t in result.trials) == [1] * 28 + [9] * 2
    assert result.item_evaluations == 28 * 1 + 2 * 9
    # the two finalists are round 1's best two (Quadratic ranks on any prefix as on all items): the optimum is one
    assert (result.best["scaling"], result.best["density"]) == (0.6, 0.2)
    # max_rounds keeps the first round and the last ones of eta's schedule, whatever its length
    assert SuccessiveHalving(eta=2, finalists=None, max_rounds=None).schedule(16, 16) == [(16, 1), (8, 2), (4, 4), (2, 8)]
    assert SuccessiveHalving(eta=2, finalists=None, max_rounds=3).schedule(16, 16) == [(16, 1), (4, 4), (2, 8)]
    assert SuccessiveHalving(eta=2, finalists=None).schedule(16, 16) == [(16, 1), (2, 8)]
    assert SuccessiveHalving().schedule(9, 27) == [(9, 3), (2, 9)]  # two rounds already: unchanged


def test_fewer_than_two_rounds_is_refused_with_the_reason():
    with pytest.raises(UsageError, match=r"max_rounds >= 2 \(the first round and the finalists'\)"):
        SuccessiveHalving(max_rounds=1)


def test_fewer_than_two_finalists_is_refused_with_the_reason():
    with pytest.raises(UsageError, match="at least 2 finalists"):
        SuccessiveHalving(finalists=1)


class Sparse(Quadratic):
    """One task of 4 items over 27 units: 3 units hold none of them (round(3 · 4 / 27) = 0)."""

    def scores(self, points, start, stop):
        first, last = item_span(start, stop, 4, self.n_items)
        out = []
        for params in points:
            self.calls.append((dict(params), start, stop))
            out.append({"a": [-(params["scaling"] - 0.9) ** 2] * (last - first)})
        return out

    def combine(self, scores):
        values = scores.get("a") or []
        return sum(values) / len(values) if values else float("-inf")


def test_a_round_whose_items_are_empty_drops_no_point():
    """Ten λ on 3 then 9 units: the first round scores nothing, so all ten go on (not λ 0.1–0.3 in grid order)."""
    objective = Sparse(n_items=27)
    points = [{"scaling": round(0.1 * i, 1), "density": 0.2} for i in range(1, 11)]
    result = SuccessiveHalving(finalists=None).run(points, objective)
    assert SuccessiveHalving(finalists=None).schedule(10, 27) == [(10, 3), (3, 9)]
    assert result.best["scaling"] == 0.9
    assert sorted(stop for _, _, stop in objective.calls) == [3] * 10 + [9] * 10


class TiedAccuracy:
    """Every point scores 1.0 on every item; the soft values peak at scaling 0.7, density 0.3."""

    n_items = 27

    def scores(self, points, start, stop):
        return [{"a": [1.0] * (stop - start),
                 soft_key("a"): [0.5 - abs(p["scaling"] - 0.7) - abs(p["density"] - 0.3)] * (stop - start)}
                for p in points]

    def combine(self, scores):
        return sum(scores["a"]) / len(scores["a"])

    def tiebreak(self, scores):
        return sum(scores[soft_key("a")]) / len(scores[soft_key("a")])


def test_tied_objectives_are_decided_by_the_tiebreak_not_by_grid_order():
    points = grid_points(SPEC)
    for search in (GridSearch(), SuccessiveHalving()):
        result = search.run(points, TiedAccuracy())
        assert (result.best["scaling"], result.best["density"]) == (0.7, 0.3), search.name
        assert {t["tiebreak"] for t in result.as_dict()["trials"]} != {0.0}
    # an objective without a tiebreak keeps grid order among ties, as before
    assert GridSearch().run(points, NoTiebreak()).best == points[0]


class NoTiebreak:
    """TiedAccuracy without the optional ``tiebreak``."""

    n_items = 27
    scores = TiedAccuracy.scores
    combine = TiedAccuracy.combine


def test_merge_objective_tiebreak_is_the_mean_of_the_surrogates_mean_log_soft_values():
    objective = MergeObjective.__new__(MergeObjective)
    objective.surrogates = [Surrogate(TaskSpec(name=n, impl="x:y", domain="math", metric="acc"), 4, 0.5)
                            for n in ("a", "b", "gen")]
    scores = {"a": [1.0, 0.0], soft_key("a"): [0.8, 0.2], "b": [1.0], soft_key("b"): [0.9],
              "gen": [1.0], soft_key("gen"): []}  # a generated surrogate has no soft values
    assert objective.tiebreak(scores) == pytest.approx(((math.log(0.8) + math.log(0.2)) / 2 + math.log(0.9)) / 2)
    assert objective.tiebreak({"a": [0.0], soft_key("a"): [0.0]}) == pytest.approx(math.log(1e-300))  # underflowed
    assert objective.tiebreak({"gen": [1.0]}) == 0.0
