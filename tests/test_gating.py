"""Thresholds and comparisons for CI gating, computed by hand."""

from __future__ import annotations

import pytest

from mergebench.errors import UsageError
from mergebench.results.gating import compare, parse_threshold, unmatched
from tests.test_results import case


@pytest.mark.parametrize("text, kind, name, allowed_from_0_8", [
    ("normalized:2%", "normalized", None, 0.016),
    ("normalized:1.5pp", "normalized", None, 0.015),
    ("task:gsm8k_mini:1.5pp", "task", "gsm8k_mini", 0.015),
    ("task:gsm8k_bpb_mini:0.05", "task", "gsm8k_bpb_mini", 0.05),
    ("domain:math:10%", "domain", "math", 0.08),
    ("task:5%", "task", None, 0.04),
])
def test_parse(text, kind, name, allowed_from_0_8):
    threshold = parse_threshold(text)
    assert (threshold.kind, threshold.name) == (kind, name)
    assert threshold.allowed_drop(0.8) == pytest.approx(allowed_from_0_8)


@pytest.mark.parametrize("text, message", [
    ("normalised:2%", "KIND one of normalized, forgetting, domain, task"),
    ("normalized:math:2%", "normalized takes no name"),
    ("task:gsm8k:two", "amount 'two' must be a number, N% or Npp"),
    ("task", r"expected KIND\[:NAME\]:AMOUNT"),
])
def test_malformed_thresholds_name_the_fix(text, message):
    with pytest.raises(UsageError, match=message):
        parse_threshold(text)


def test_a_drop_respects_the_metrics_direction():
    threshold = parse_threshold("task:x:0.1")
    assert threshold.fails(baseline=0.5, current=0.39, higher_is_better=True)
    assert not threshold.fails(baseline=0.5, current=0.41, higher_is_better=True)
    assert threshold.fails(baseline=0.5, current=0.61, higher_is_better=False)  # bits per byte went up
    assert not threshold.fails(baseline=0.5, current=0.2, higher_is_better=False)


def test_compare_flags_exactly_the_regressed_values():
    baseline = [case("gsm8k", "math", merged=0.40, expert=0.50), case("humaneval", "coding", merged=0.30, expert=0.30)]
    current = [case("gsm8k", "math", merged=0.30, expert=0.50), case("humaneval", "coding", merged=0.30, expert=0.30)]
    deltas = compare(baseline, current, [parse_threshold("normalized:5%"), parse_threshold("task:humaneval:1pp")])
    by_value = {(d.kind, d.name): d for d in deltas}
    # normalized: (0.8 + 1.0)/2 = 0.9 before, (0.6 + 1.0)/2 = 0.8 after: an 11% relative drop
    assert by_value[("normalized", "overall")].baseline == pytest.approx(0.9)
    assert by_value[("normalized", "overall")].current == pytest.approx(0.8)
    assert by_value[("normalized", "overall")].failed_by == "normalized:5%"
    assert by_value[("task", "humaneval")].failed_by == ""
    assert by_value[("task", "gsm8k")].failed_by == ""  # no threshold on it
    assert by_value[("domain", "math")].change == pytest.approx(-0.2)


def test_unmatched_cases_are_reported_not_compared():
    before = [case("gsm8k", "math", merged=0.4, expert=0.5)]
    after = [case("mbpp", "coding", merged=0.4, expert=0.5)]
    assert unmatched(before, after) == (["m-soup-gsm8k"], ["m-soup-mbpp"])
