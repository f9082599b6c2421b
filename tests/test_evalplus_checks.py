"""evalplus's comparisons, as ported into the sandbox's driver, on hand-made outputs."""

from __future__ import annotations

import math

import pytest

from mergebench.evaluation.evalplus_checks import CHECKER, check_program, literal


def run_checks(dataset, entry_point, fn, inputs, expected, atol=0):
    namespace = {"__sandbox_timed_call__": lambda seconds, f, *args: f(*args), "__sandbox_candidate__": lambda name: fn}
    program = check_program(dataset, {"entry_point": entry_point, "atol": atol}, inputs, expected, [0.0] * len(inputs))
    assert program["tests"].startswith(CHECKER) and program["timeout"] == min(60, len(inputs)) + 2
    exec(program["tests"], namespace)


def test_literals_round_trip_what_repr_cannot():
    values = [float("inf"), -float("inf"), 2 ** 20000, -(2 ** 70), (1,), (), {(1, 2): {3}}, set(), frozenset({1}), 1 + 2j,
              b"\x00", [None, True, "s"]]
    for value in values:
        assert eval(literal(value)) == value and type(eval(literal(value))) is type(value)
    assert math.isnan(eval(literal(float("nan"))))
    with pytest.raises(TypeError):
        literal(object())


def test_exact_float_special_oracle_and_set_comparisons():
    run_checks("humaneval", "f", lambda x: x / 3, [[1.0]], [1 / 3 + 1e-9])  # floats: atol 1e-6 by default
    with pytest.raises(AssertionError):
        run_checks("humaneval", "f", lambda x: x / 3, [[1.0]], [0.34])
    with pytest.raises(AssertionError):
        run_checks("humaneval", "f", lambda x: [x], [[1]], [(1,)])  # a list is not a tuple
    run_checks("humaneval", "find_zero", lambda xs: -0.5, [[[1, 2]]], [123.0], atol=1e-6)  # checked by the root, not the value
    run_checks("mbpp", "similar_elements", lambda a, b: [4, 5], [[(3, 4, 5), (5, 4)]], [(5, 4)])
    run_checks("mbpp", "check_str", lambda s: object(), [["a"]], [True])  # output-not-None task
    run_checks("mbpp", "sum_div", lambda n: 0, [[7]], [1])
    with pytest.raises(AssertionError):
        run_checks("mbpp", "other", lambda n: 0, [[7]], [1])
