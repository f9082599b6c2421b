"""Thresholds and comparisons for CI gating, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mergebench.errors import UsageError
from mergebench.results.gating import compare, parse_threshold, unmatched
from tests.item_results import binary, item_case
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


# -- the noise-aware gate: a one-sided paired bootstrap test on the shared items ------------------------

def _gate(baseline, current, *thresholds, **options):
    from mergebench.results.gating import compare

    return {(d.kind, d.name): d for d in compare(baseline, current, [parse_threshold(t) for t in thresholds], **options)}


def _flip(values, count, to):
    out = np.array(values, dtype=float)
    out[np.flatnonzero(out != to)[:count]] = to
    return out


def test_a_5_point_drop_over_500_items_fails():
    rng = np.random.default_rng(0)
    before, expert = binary(rng, 500, 0.7), binary(rng, 500, 0.8)
    after = _flip(before, 25, 0.0)  # 25 of 500 items lost: 5 points
    deltas = _gate([item_case("t", "math", before, expert)], [item_case("t", "math", after, expert)],
                   "task:t:2pp", "normalized:2%")
    task = deltas[("task", "t")]
    assert task.test.drop == pytest.approx(0.05) and task.failed_by == "task:t:2pp"
    assert task.test.p < 0.001 and task.test.pairing == "paired" and task.test.items == 500
    assert 0.02 < task.test.lo < 0.05 < task.test.hi < 0.08
    assert deltas[("normalized", "overall")].failed_by == "normalized:2%"


def test_a_2_point_difference_over_16_items_passes_and_says_the_gate_cannot_see_less_than_15():
    rng = np.random.default_rng(1)
    before, expert = rng.random(16), rng.random(16)
    noise = rng.normal(0, 0.15, 16)
    after = before + noise - noise.mean() - 0.02  # 2 points lower on average, item by item noisy
    task = _gate([item_case("t", "math", before, expert)], [item_case("t", "math", after, expert)], "task:t:1pp")[("task", "t")]
    assert task.test.drop == pytest.approx(0.02, abs=1e-6) and task.passed_threshold == "task:t:1pp"
    assert task.failed_by == "" and task.test.p > 0.05
    assert task.test.detectable >= 0.15


def test_one_item_of_16_flipping_is_noise_for_the_test_but_fails_the_point_rule():
    rng = np.random.default_rng(2)
    before = binary(rng, 16, 0.6)
    after = _flip(before, 1, 0.0)
    runs = ([item_case("t", "instruction", before, [1.0] * 16)], [item_case("t", "instruction", after, [1.0] * 16)])
    noisy = _gate(*runs, "task:t:2pp")[("task", "t")]
    assert noisy.failed_by == "" and noisy.passed_threshold and noisy.test.p == pytest.approx((15 / 16) ** 16, abs=0.04)
    assert _gate(*runs, "task:t:2pp", test="point")[("task", "t")].failed_by == "task:t:2pp"


@pytest.mark.parametrize("seed", range(20))
def test_a_gate_on_identical_runs_never_fails(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    results = [item_case("a", "math", binary(rng, n, 0.5), binary(rng, n, 0.6)),
               item_case("b", "coding", rng.random(n) + 0.5, rng.random(n) + 0.5, higher=False),
               item_case("g", "general", binary(rng, n, 0.5), base=binary(rng, n, 0.5))]
    deltas = _gate(results, list(results), "normalized:0", "forgetting:0", "task:0", "domain:0", alpha=0.5)
    assert not any(d.failed_by for d in deltas.values())
    assert all(d.test.p == 1.0 and d.test.drop == 0 for d in deltas.values())
    assert all(d.test.detectable > 0 for d in deltas.values() if d.test.detectable is not None)


def test_the_detectable_drop_is_z_alpha_plus_z_power_times_the_standard_error_of_a_difference_of_two_runs():
    from statistics import NormalDist

    from mergebench.results.drop_test import BASELINE, CURRENT
    from mergebench.results.uncertainty import Bootstrap

    rng = np.random.default_rng(3)
    before = [item_case("t", "math", binary(rng, 100, 0.5), [1.0] * 100)]
    after = [item_case("t", "math", binary(rng, 100, 0.5), [1.0] * 100)]
    found = _gate(before, after, "task:t:1pp", alpha=0.1)[("task", "t")].test
    boot = Bootstrap({BASELINE: before, CURRENT: after})
    se = [float(np.std(boot.values(run, "m", "soup")[("task", "t")], ddof=1)) for run in (BASELINE, CURRENT)]
    z = NormalDist().inv_cdf
    assert found.detectable == pytest.approx((z(0.9) + z(0.8)) * np.hypot(*se))
    assert found.detectable == pytest.approx((z(0.9) + z(0.8)) * np.sqrt(2 * 0.25 / 100), rel=0.15)  # binomial, p≈0.5


def test_a_baseline_without_per_item_values_is_gated_on_point_estimates_and_says_so():
    rng = np.random.default_rng(4)
    now = binary(rng, 20, 0.3)
    old = case("t", "math", merged=0.8, expert=0.5)  # saved before per-item values: no items
    deltas = _gate([old], [item_case("t", "math", now, binary(rng, 20, 0.5))], "task:t:5pp")
    task = deltas[("task", "t")]
    assert task.failed_by == "task:t:5pp" and not task.test.tested
    assert "the baseline has no per-item values for t (saved before mergebench kept per-item values" in task.test.untested


def test_runs_on_different_items_are_compared_unpaired_and_one_item_cannot_be_tested():
    rng = np.random.default_rng(5)
    before = [item_case("a", "math", binary(rng, 30, 0.5), [1.0] * 30), item_case("b", "math", [0.5], [1.0])]
    after = [item_case("a", "math", binary(rng, 30, 0.5), [1.0] * 30, fingerprint="another item list"),
             item_case("b", "math", [0.4], [1.0])]
    deltas = _gate(before, after, "task:0.5")
    assert deltas[("task", "a")].test.pairing == "unpaired"
    assert deltas[("task", "b")].test.untested == "b has 1 item in the baseline: no variation to test against"
    after[1] = item_case("b", "math", binary(rng, 30, 0.5), [1.0] * 30, fingerprint="items-of-b")
    before[1] = item_case("b", "math", binary(rng, 30, 0.5), [1.0] * 30)
    assert _gate(before, after)[("domain", "math")].test.pairing == "partly paired (a unpaired)"


def test_the_gates_level_and_test_are_checked():
    with pytest.raises(UsageError, match=r"alpha 0.7: the gate's level must be in \(0, 0.5\], e.g. 0.05"):
        _gate([], [], alpha=0.7)
    with pytest.raises(UsageError, match="unknown gate test 'exact'; choose one of bootstrap, point"):
        _gate([], [], test="exact")


def test_the_gate_explains_each_failure_what_passed_as_noise_and_what_it_can_see():
    from mergebench.results.comparison_report import gate_lines
    from mergebench.results.gating import compare

    rng = np.random.default_rng(6)
    expert = binary(rng, 16, 0.9)
    before = [item_case("ifeval", "instruction", binary(rng, 16, 0.6), expert, method="soup"),
              item_case("ifeval", "instruction", _flip(binary(rng, 16, 0.6), 6, 1.0), expert, method="ties")]
    after = [item_case("ifeval", "instruction", _flip(before[0].items.merged, 1, 0.0), expert, method="soup"),
             item_case("ifeval", "instruction", _flip(before[1].items.merged, 12, 0.0), expert, method="ties")]
    deltas = compare(before, after, [parse_threshold("task:ifeval:2pp")])
    lines = [text for _, text in gate_lines(deltas)]
    assert any(line.startswith("REGRESSION m · ties task:ifeval: ") and "breaks task:ifeval:2pp: drop " in line
               and "(95% interval [" in line and "paired on 16 items; with 16 items this gate sees drops of " in line
               for line in lines)
    assert any(line.startswith("WITHIN NOISE m · soup task:ifeval: ") for line in lines)
    summary = next(line for line in lines if line.startswith("task:ifeval:2pp on 2 values: with 16 items"))
    low = float(summary.split("sees drops of ")[1].split("pp")[0])
    assert low >= 15  # 16 binary items: no gate sees a drop of less than ~15 points
