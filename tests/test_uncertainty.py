"""Intervals from the paired bootstrap over items, checked against hand computations and known truths."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mergebench.results import domain_scores, overall_normalized
from mergebench.results.uncertainty import Bootstrap, ties_with_best
from tests.item_results import binary, item_case
from tests.test_results import case

OVERALL = ("normalized", "overall")


def test_point_estimates_are_the_formulas_of_the_report():
    rng = np.random.default_rng(0)
    results = [
        item_case("gsm8k", "math", binary(rng, 12, 0.4), binary(rng, 12, 0.6)),
        item_case("gsm8k_bpb", "math", rng.random(12) + 1, rng.random(12) + 0.8, higher=False),  # mixed directions
        item_case("mbpp_bpb", "coding", rng.random(8) + 0.5, rng.random(8) + 0.4, higher=False),
        item_case("mmlu", "general", binary(rng, 20, 0.5), base=binary(rng, 20, 0.5)),
        item_case("coqa_bpb", "general", rng.random(6) + 1, base=rng.random(6) + 1, higher=False),
    ]
    points = Bootstrap(results).points("", "m", "soup")
    assert points[OVERALL] == pytest.approx(overall_normalized(results))
    assert points[("forgetting", "overall")] == pytest.approx(overall_normalized(results, forgetting=True))
    for domain in domain_scores([r for r in results if r.domain != "general"]):
        assert points[("domain", domain.domain)] == pytest.approx(domain.normalized)
    assert points[("task", "mbpp_bpb")] == results[2].merged.score


def test_a_task_interval_is_the_percentile_of_means_over_resampled_items_computed_by_hand():
    values = [0.1, 0.4, 0.35, 0.8, 0.05, 0.6, 0.9, 0.2, 0.3, 0.55]
    r = item_case("t", "math", values, values)
    boot = Bootstrap([r], resamples=1000)
    counts = boot.counts("m", "t", r.items.fingerprint, 10)
    assert counts.shape == (1000, 10) and set(counts.sum(axis=1)) == {10}  # each resample draws 10 items
    by_hand = np.array([sum(c * v for c, v in zip(row, r.items.merged)) / 10 for row in counts])
    found = boot.interval("m", "soup", ("task", "t"))
    assert (found.lo, found.hi) == pytest.approx(tuple(np.quantile(by_hand, [0.025, 0.975])))
    assert found.se == pytest.approx(by_hand.std(ddof=1))
    assert found.value == pytest.approx(np.mean(values)) and found.items == 10


def test_merged_and_reference_are_resampled_together():
    # the merged model scores exactly half its expert on every item: every resample's ratio is 0.5
    expert = np.linspace(0.2, 1.0, 16)
    boot = Bootstrap([item_case("t", "math", expert / 2, expert)])
    found = boot.interval("m", "soup", OVERALL)
    assert found.value == pytest.approx(0.5) and found.lo == pytest.approx(0.5) and found.hi == pytest.approx(0.5)


def _grid(rng, methods=("soup", "ties", "dare")):
    expert = {t: binary(rng, 16, 0.7) for t in ("a", "b", "c")}
    return [item_case(t, d, binary(rng, 16, 0.6), expert[t], method=m)
            for m in methods for t, d in (("a", "math"), ("b", "math"), ("c", "coding"))]


def test_same_results_and_seed_give_the_same_interval_whatever_their_order():
    results = _grid(np.random.default_rng(1))
    first = Bootstrap(results, seed=3).interval("m", "ties", OVERALL)
    shuffled = list(results)
    random.Random(0).shuffle(shuffled)
    assert Bootstrap(shuffled, seed=3).interval("m", "ties", OVERALL) == first
    assert Bootstrap([r for r in results if r.method == "ties"], seed=3).interval("m", "ties", OVERALL) == first
    assert Bootstrap(results, seed=4).interval("m", "ties", OVERALL) != first


def test_methods_share_each_tasks_draws_and_tasks_are_drawn_independently():
    results = _grid(np.random.default_rng(2))
    boot = Bootstrap(results)
    draws = {t: boot.counts("m", t, f"items-of-{t}", 16) for t in ("a", "b")}
    assert not np.array_equal(draws["a"], draws["b"])
    by_hand = (draws["a"] @ np.asarray(results[0].items.merged)) / 16  # soup on task a
    assert np.array_equal(boot.values("", "m", "soup")[("task", "a")], by_hand)
    ties_a = next(r for r in results if r.method == "ties" and r.task == "a")
    assert np.array_equal(boot.values("", "m", "ties")[("task", "a")], (draws["a"] @ np.asarray(ties_a.items.merged)) / 16)


def test_clustered_items_resample_whole_prompts():
    # IFEval-like: 3 prompts holding 3, 1 and 2 instructions; a resample draws prompts
    values = [1, 0, 1, 1, 0, 0]
    r = item_case("ifeval", "instruction", values, [1] * 6, clusters=(3, 1, 2))
    boot = Bootstrap([r], resamples=500)
    counts = boot.counts("m", "ifeval", r.items.fingerprint, 3)
    sums, sizes = np.array([2.0, 1.0, 0.0]), np.array([3.0, 1.0, 2.0])
    assert np.allclose(boot.values("", "m", "soup")[("task", "ifeval")], (counts @ sums) / (counts @ sizes))
    assert r.items.items == 3


def test_a_paired_difference_sees_a_small_consistent_gap_that_two_intervals_hide():
    rng = np.random.default_rng(5)
    expert = rng.random(20) + 0.5
    a = expert * rng.uniform(0.6, 1.0, 20)
    results = [item_case("t", "math", a, expert, method="a"), item_case("t", "math", a - 0.02, expert, method="b"),
               item_case("t", "math", a + rng.normal(0, 0.05, 20), expert, method="c")]
    boot = Bootstrap(results)
    one, two = boot.interval("m", "a", OVERALL), boot.interval("m", "b", OVERALL)
    assert one.lo < two.hi  # the two intervals overlap ...
    assert boot.difference("m", "a", "b", OVERALL).lo > 0  # ... but a is ahead on the same items
    best, tied = ties_with_best(boot, "m", ["a", "b", "c"], OVERALL)
    assert best == {"a"} and "b" not in tied and "c" in tied
    same = Bootstrap(results + [item_case("t", "math", a, expert, method="a2")])
    assert ties_with_best(same, "m", ["a", "b", "a2"], OVERALL)[0] == {"a", "a2"}  # equal values: both best


def test_resamples_where_the_reference_scores_zero_are_left_out():
    expert = [1.0] + [0.0] * 9  # one refusal in ten: a resample often holds none
    boot = Bootstrap([item_case("t", "safety", [1.0] + [0.0] * 9, expert)])
    assert np.isnan(boot.values("", "m", "soup")[OVERALL]).any()
    found = boot.interval("m", "soup", OVERALL)
    assert found.lo == found.hi == 1.0


def test_results_without_per_item_values_have_no_interval():
    boot = Bootstrap([case("gsm8k", "math", merged=0.4, expert=0.5)])
    assert boot.points("", "m", "soup")[OVERALL] == pytest.approx(0.8)
    assert boot.interval("m", "soup", OVERALL) is None


def test_the_normalized_interval_covers_the_truth_in_95_percent_of_simulated_data_sets():
    """1,000 data sets of two domains (50 binary items a task, merged and expert correlated through
    each item's difficulty); the truth is the ratio of the pass rates."""
    rng = np.random.default_rng(7)
    merged_rate, expert_rate = {"math": 0.55, "coding": 0.7}, {"math": 0.7, "coding": 0.75}
    truth = np.mean([merged_rate[d] / expert_rate[d] for d in merged_rate])
    covered = 0
    for seed in range(1000):
        results = []
        for domain in merged_rate:
            difficulty = rng.random(50)
            merged = (difficulty < merged_rate[domain]).astype(float)
            expert = (difficulty < expert_rate[domain]).astype(float)
            redrawn = rng.random(50) < 0.3
            expert[redrawn] = rng.random(redrawn.sum()) < expert_rate[domain]
            results.append(item_case(domain, domain, merged, expert))
        found = Bootstrap(results, seed=seed, resamples=1000).interval("m", "soup", OVERALL)
        covered += found.contains(truth)
    assert covered >= 930, f"covered the truth in {covered} of 1000"
