"""The checks of one HumanEval+/MBPP+ problem as a test program for the sandbox's driver.

evalplus judges a solution inside the solution's own process (``evalplus.eval.unsafe_execute``:
the verdict is a shared-memory value the solution can write). Here the same comparisons run in
the sandbox's trusted driver (:mod:`mergebench.evaluation.sandbox`), with the inputs and the
expected outputs (computed by evalplus from the canonical solutions) written into the test
program as literals, and the solution called through the sandbox's pipe.

Ported from evalplus 0.3.1 ``unsafe_execute``: exact match first; MBPP's special oracles
(``are_equivalent``, ``sum_div``, ``surface_Area``, ``digit_distance_nums``, set-equality tasks,
output-not-None tasks) and HumanEval's ``find_zero`` oracle; then, for floats or a non-zero
``atol``, same type, same length and ``numpy.allclose(out, exp, rtol=1e-07, atol=atol)``
(re-implemented without numpy); ``atol`` becomes 1e-6 once an expected output is a float, as in
evalplus. Each input gets evalplus's time limit, ``max(1 s, 4 × the canonical solution's time)``,
the first failing input ends the run (evalplus's ``fast_check``), and the whole program gets
``min(60 s, sum of the limits) + 2 s`` (evalplus: + 1 s, and process start-up outside it).
"""

from __future__ import annotations

import math

MIN_TIME_LIMIT, TIME_LIMIT_FACTOR, TASK_TIMEOUT = 1.0, 4.0, 60.0

# The trusted half of the program. The solution's entry point is fetched with __sandbox_candidate__,
# not bound by name, so an entry point called like a builtin cannot take over the builtins used here.
CHECKER = '''
import math

MBPP_OUTPUT_NOT_NONE_TASKS = ["check_str", "text_match_three", "text_starta_endb"]
MBPP_OUTPUT_SET_EQ_TASKS = ["similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                            "larg_nnum", "intersection_array", "find_dissimilar", "Diff"]


def _surface_Area(base_edge, height):
    slant_height = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant_height) / 2)


def _digit_distance_nums(num1, num2):
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def _poly(xs, x):
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def _is_floats(x):
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _allclose(a, b, rtol, atol):
    """numpy.allclose for numbers and (nested) sequences of numbers, scalars broadcast."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(_allclose(x, y, rtol, atol) for x, y in zip(a, b))
        if isinstance(a, (list, tuple)):
            return all(_allclose(x, b, rtol, atol) for x in a)
        return all(_allclose(a, y, rtol, atol) for y in b)
    a, b = float(a), float(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def _check(dataset, entry_point, fn, inputs, expected, time_limits, atol):
    for i, (inp, exp) in enumerate(zip(inputs, expected)):
        out = __sandbox_timed_call__(time_limits[i], fn, *inp)
        if dataset == "mbpp" and entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
            exact_match = out == exp if isinstance(out, bool) else exp == (out is not None)
            assert exact_match, f"input {i}"
            continue
        if dataset == "humaneval" and entry_point == "find_zero":
            assert abs(_poly(*inp, out)) <= atol, f"input {i}"
            continue
        exact_match = out == exp
        if dataset == "mbpp":
            if entry_point == "are_equivalent":
                exact_match = True
            elif entry_point == "sum_div":
                exact_match = exact_match or out == 0
            elif entry_point == "surface_Area":
                exact_match = exact_match or abs(out - _surface_Area(*inp)) <= atol
            elif entry_point == "digit_distance_nums":
                exact_match = exact_match or out == _digit_distance_nums(*inp)
            elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                exact_match = set(out) == set(exp)
        if atol == 0 and _is_floats(exp):
            atol = 1e-6
        if not exact_match and atol != 0:
            assert type(out) == type(exp), f"input {i}: {type(out).__name__}, not {type(exp).__name__}"
            if isinstance(exp, (list, tuple)):
                assert len(out) == len(exp), f"input {i}: length"
            assert _allclose(out, exp, 1e-07, atol), f"input {i}"
        else:
            assert exact_match, f"input {i}"
'''


def check_program(dataset: str, problem: dict, inputs: list, expected: list, ref_times: list[float]) -> dict:
    """``{"tests": source, "timeout": seconds}`` checking ``problem``'s entry point on ``inputs``."""
    limits = [max(MIN_TIME_LIMIT, TIME_LIMIT_FACTOR * t) for t in ref_times]
    entry = problem["entry_point"]
    call = (f"_check({dataset!r}, {entry!r}, __sandbox_candidate__({entry!r}), {literal(inputs)}, {literal(expected)}, "
            f"{literal(limits)}, {literal(problem['atol'])})\n")
    return {"tests": CHECKER + call, "timeout": min(TASK_TIMEOUT, sum(limits)) + 2.0}


def literal(value) -> str:
    """Python source for a plain value (exact builtin types only; ``inf``, ``nan`` and big ints included)."""
    kind = type(value)
    if value is None or kind in (bool, str, bytes):
        return repr(value)
    if kind is int:
        return repr(value) if -(1 << 63) < value < 1 << 63 else hex(value)  # repr of a huge int is refused
    if kind is float:
        return repr(value) if math.isfinite(value) else f"float({repr(value)!r})"
    if kind is complex:
        return f"complex({literal(value.real)}, {literal(value.imag)})"
    if kind is list:
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if kind is tuple:
        return "(" + "".join(literal(v) + ", " for v in value) + ")"
    if kind is dict:
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if kind is set:
        return "{" + ", ".join(literal(v) for v in value) + "}" if value else "set()"
    if kind is frozenset:
        return f"frozenset({literal(set(value))})"
    raise TypeError(f"a {kind.__name__} cannot be written as a literal")
