"""Compare a run against a saved baseline and fail on regressions (``--mb-compare-fail``).

Thresholds are parsed once, at start-up, into :class:`Threshold` objects (as pytest-benchmark
does), so a malformed one is a usage error before anything runs. Grammar::

    KIND[:NAME]:AMOUNT
    KIND    normalized | forgetting | domain | task
    NAME    a domain (for domain) or a task (for task); omitted = every one
    AMOUNT  N%   relative: fail if the value drops by more than N percent of the baseline
            Npp  absolute, in percentage points (0.01 of a fraction-valued score)
            N    absolute, in the value's own units

``normalized:2%`` fails a (model, method) whose normalized multi-task score falls below 98% of
its baseline; ``task:gsm8k_mini:1.5pp`` fails when exact match drops by more than 0.015.
A "drop" respects the metric's direction: for bits per byte, going up is the drop.

By default (``test="bootstrap"``) a value fails only when its drop passes the threshold *and* a
one-sided paired bootstrap test on the shared items says the drop is real at level ``alpha``
(:mod:`mergebench.results.drop_test`): on 16 items a retrained expert or another seed moves
values by more than 2%, and such noise should not fail CI. Every compared value carries the
test: its drop's interval and the smallest drop the gate can see. A value that cannot be tested
(a baseline saved without per-item values, a task of one item) falls back to the point rule, and
says so. ``test="point"`` asks for the point rule everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from mergebench.errors import UsageError
from mergebench.results import CaseResult

if TYPE_CHECKING:
    from mergebench.results.drop_test import DropTest

KINDS = ("normalized", "forgetting", "domain", "task")
_AMOUNT = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>%|pp)?$")


@dataclass(frozen=True)
class Threshold:
    kind: str
    name: str | None
    value: float
    unit: str  # "%", "pp" or ""
    text: str

    def allowed_drop(self, baseline: float) -> float:
        if self.unit == "%":
            return abs(baseline) * self.value / 100
        if self.unit == "pp":
            return self.value / 100
        return self.value

    def fails(self, baseline: float, current: float, higher_is_better: bool = True) -> bool:
        drop = (baseline - current) if higher_is_better else (current - baseline)
        return drop > self.allowed_drop(baseline) + 1e-12

    def applies_to(self, kind: str, name: str | None) -> bool:
        return self.kind == kind and (self.name is None or self.name == name)


def parse_threshold(text: str) -> Threshold:
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or parts[0] not in KINDS:
        raise UsageError(
            f"--mb-compare-fail {text!r}: expected KIND[:NAME]:AMOUNT with KIND one of {', '.join(KINDS)}, "
            "e.g. normalized:2% or task:gsm8k_mini:1.5pp"
        )
    kind, name, amount = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]
    if kind in ("normalized", "forgetting") and name is not None:
        raise UsageError(f"--mb-compare-fail {text!r}: {kind} takes no name (use {kind}:AMOUNT)")
    match = _AMOUNT.match(amount)
    if not match:
        raise UsageError(f"--mb-compare-fail {text!r}: amount {amount!r} must be a number, N% or Npp")
    return Threshold(kind, name or None, float(match["value"]), match["unit"] or "", text)


def parse_thresholds(texts: Iterable[str]) -> list[Threshold]:
    return [parse_threshold(t) for t in texts]


def check_alpha(alpha: float, option: str = "alpha") -> float:
    """``option`` names the flag the user typed, so the message says what to change."""
    if not 0 < alpha <= 0.5:
        raise UsageError(f"{option} {alpha}: the gate's level must be in (0, 0.5], e.g. 0.05")
    return alpha


@dataclass(frozen=True)
class Delta:
    """One compared value of one (model, method), with the test of its drop."""

    model: str
    method: str
    kind: str
    name: str
    baseline: float
    current: float
    higher_is_better: bool
    failed_by: str = ""
    test: "DropTest | None" = None
    gated_by: tuple[str, ...] = ()  # the thresholds that apply to this value
    allowed: tuple[float, ...] = ()  # the drop each of them allows from the baseline
    passed_threshold: str = ""  # a threshold whose amount the drop passed (failed or not)
    rate: bool = False  # a task score that is a proportion (every item scores 0 or 1): shown in percent

    @property
    def change(self) -> float:
        return self.current - self.baseline


def compare(baseline: Sequence[CaseResult], current: Sequence[CaseResult], thresholds: Sequence[Threshold] = (), *,
            alpha: float = 0.05, test: str = "bootstrap", seed: int = 0, resamples: int = 2000) -> list[Delta]:
    """Every value present in both runs, with the test of its drop and the first threshold it fails (if any).

    Runs of different semantics (``--mb-semantics``) are not compared: their merges are different algorithms."""
    from mergebench.results.drop_test import BASELINE, CURRENT, TESTS, drop_test
    from mergebench.results.uncertainty import Bootstrap

    old_semantics, new_semantics = ({r.semantics for r in rs} for rs in (baseline, current))
    if old_semantics and new_semantics and old_semantics != new_semantics:
        raise UsageError(f"the baseline ran --mb-semantics {', '.join(sorted(old_semantics))} and this run "
                         f"{', '.join(sorted(new_semantics))}: compare with a baseline of the same semantics")
    if test not in TESTS:
        raise UsageError(f"unknown gate test {test!r}; choose one of {', '.join(TESTS)}")
    check_alpha(alpha)
    boot = Bootstrap({BASELINE: baseline, CURRENT: current}, seed=seed, resamples=resamples)
    deltas = []
    for model, method in sorted(set(boot.groups[BASELINE]) & set(boot.groups[CURRENT])):
        before, after = boot.points(BASELINE, model, method), boot.points(CURRENT, model, method)
        rows = boot.groups[CURRENT][(model, method)]
        directions = {r.task: r.higher_is_better for r in rows}
        rates = {r.task for r in rows if r.items is not None and set(r.items.merged) <= {0.0, 1.0}}
        for key in sorted(set(before) & set(after), key=lambda k: (KINDS.index(k[0]), k[1])):
            kind, name = key
            higher = directions[name] if kind == "task" else True
            found = drop_test(boot, model, method, key, higher, alpha)
            applying = [t for t in thresholds if t.applies_to(kind, None if kind in ("normalized", "forgetting") else name)]
            passed = next((t.text for t in applying if t.fails(before[key], after[key], higher)), "")
            real = test == "point" or not found.tested or found.p <= alpha  # type: ignore[operator]
            deltas.append(Delta(model, method, kind, name, before[key], after[key], higher, passed if real else "",
                                found, tuple(t.text for t in applying), tuple(t.allowed_drop(before[key]) for t in applying),
                                passed, kind == "task" and name in rates))
    return deltas


def unmatched(baseline: Sequence[CaseResult], current: Sequence[CaseResult]) -> tuple[list[str], list[str]]:
    """Case ids only in the baseline, and only in the current run."""
    old, new = {r.case_id for r in baseline}, {r.case_id for r in current}
    return sorted(old - new), sorted(new - old)
