"""Normalization as the study defines it, computed by hand."""

from __future__ import annotations

import pytest

from mergebench.results import (
    CaseResult,
    Score,
    domain_scores,
    overall_normalized,
    ratio,
    read_json,
    write_json,
)


def case(task, domain, merged, expert=None, base=None, higher=True, method="soup"):
    reference = "base" if domain == "general" else "expert"
    ref_score = base if reference == "base" else expert
    return CaseResult(
        case_id=f"m-{method}-{task}", model="m", method=method, task=task, domain=domain, metric="acc",
        higher_is_better=higher, params={}, merged=Score(merged, 0.01, 10),
        expert=None if expert is None else Score(expert, 0.01, 10), base=None if base is None else Score(base, 0.01, 10),
        reference=reference, normalized=ratio(merged, ref_score, higher), merge_seconds=1.0,
    )


def test_ratio_inverts_for_lower_is_better_metrics():
    assert ratio(0.3, 0.6, True) == 0.5
    assert ratio(1.2, 0.6, False) == 0.5  # twice the bits per byte of the expert: half as good
    assert ratio(0.3, 0.0, True) is None and ratio(0.0, 0.5, False) is None


def test_domain_score_is_the_mean_of_its_datasets_then_normalized_by_the_experts_mean():
    results = [
        case("gsm8k", "math", merged=0.2, expert=0.4),
        case("math500", "math", merged=0.1, expert=0.1),
        case("humaneval", "coding", merged=0.3, expert=0.3),
    ]
    scores = {d.domain: d for d in domain_scores(results)}
    assert scores["math"].merged == pytest.approx(0.15) and scores["math"].reference == pytest.approx(0.25)
    assert scores["math"].normalized == pytest.approx(0.6)  # 0.15 / 0.25, not the mean of 0.5 and 1.0
    assert scores["coding"].normalized == pytest.approx(1.0)
    assert overall_normalized(results) == pytest.approx(0.8)


def test_mixed_metric_directions_fall_back_to_the_mean_of_task_ratios():
    results = [case("gsm8k", "math", merged=0.2, expert=0.4), case("gsm8k_bpb", "math", merged=1.0, expert=0.8, higher=False)]
    (math,) = domain_scores(results)
    assert math.mixed_directions and math.normalized == pytest.approx((0.5 + 0.8) / 2)


def test_forgetting_is_normalized_by_the_base_and_kept_out_of_multi_task():
    results = [case("mmlu", "general", merged=0.45, base=0.5), case("gsm8k", "math", merged=0.2, expert=0.4)]
    assert overall_normalized(results, forgetting=True) == pytest.approx(0.9)
    assert overall_normalized(results) == pytest.approx(0.5)


def test_json_round_trip(tmp_path):
    results = [case("gsm8k", "math", merged=0.2, expert=0.4, base=0.1)]
    path = write_json(results, tmp_path / "out" / "r.json", meta={"tag": "x"})
    assert read_json(path) == results
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_expert_table_shows_each_experts_gain_over_the_base_in_the_metrics_direction():
    from mergebench.results.report import expert_gain, render_session

    results = [
        case("gsm8k_bpb_mini", "math", 0.9, expert=0.8, base=1.0, higher=False),  # bits per byte: 20% lower = +20%
        case("harmbench_mini", "safety", 0.5, expert=0.75, base=0.25, higher=True),  # refusal rate tripled: +200%
        case("ifeval_mini", "instruction", 0.3, expert=0.25, base=0.5, higher=True),  # worse than the base: -50%
    ]
    assert expert_gain(results[0].base, results[0].expert, False) == pytest.approx(0.2)
    assert expert_gain(results[1].base, results[1].expert, True) == pytest.approx(2.0)
    text = render_session(results)
    table = text.split("each expert vs the base on its own domain", 1)[1].split("normalized performance", 1)[0]
    assert "+20.0%" in table and "+200.0%" in table and "-50.0% (not better)" in table
