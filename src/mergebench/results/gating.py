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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from mergebench.errors import UsageError
from mergebench.results import (
    CaseResult,
    domain_scores,
    group_by_model_method,
    overall_normalized,
)
from mergebench.specs import GENERAL

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


@dataclass(frozen=True)
class Delta:
    """One compared value of one (model, method)."""

    model: str
    method: str
    kind: str
    name: str
    baseline: float
    current: float
    higher_is_better: bool
    failed_by: str = ""

    @property
    def change(self) -> float:
        return self.current - self.baseline


def _values(results: Sequence[CaseResult]) -> dict[tuple[str, str, str, str], tuple[float, bool]]:
    """(model, method, kind, name) → (value, higher_is_better) for everything that can be gated."""
    values: dict[tuple[str, str, str, str], tuple[float, bool]] = {}
    for (model, method), group in group_by_model_method(results).items():
        overall = overall_normalized(group)
        if overall is not None:
            values[(model, method, "normalized", "overall")] = (overall, True)
        forgetting = overall_normalized(group, forgetting=True)
        if forgetting is not None:
            values[(model, method, "forgetting", "overall")] = (forgetting, True)
        for domain in domain_scores([r for r in group if r.domain != GENERAL]):
            if domain.normalized is not None:
                values[(model, method, "domain", domain.domain)] = (domain.normalized, True)
        for r in group:
            values[(model, method, "task", r.task)] = (r.merged.score, r.higher_is_better)
    return values


def compare(baseline: Sequence[CaseResult], current: Sequence[CaseResult],
            thresholds: Sequence[Threshold] = ()) -> list[Delta]:
    """Every value present in both runs, with the first threshold it fails (if any).

    Runs of different semantics (``--mb-semantics``) are not compared: their merges are different algorithms."""
    old_semantics, new_semantics = ({r.semantics for r in rs} for rs in (baseline, current))
    if old_semantics and new_semantics and old_semantics != new_semantics:
        raise UsageError(f"the baseline ran --mb-semantics {', '.join(sorted(old_semantics))} and this run "
                         f"{', '.join(sorted(new_semantics))}: compare with a baseline of the same semantics")
    before, after = _values(baseline), _values(current)
    deltas = []
    for key in sorted(set(before) & set(after), key=lambda k: (k[0], k[1], KINDS.index(k[2]), k[3])):
        model, method, kind, name = key
        (old, higher), (new, _) = before[key], after[key]
        failed = next((t.text for t in thresholds
                       if t.applies_to(kind, None if kind in ("normalized", "forgetting") else name)
                       and t.fails(old, new, higher)), "")
        deltas.append(Delta(model, method, kind, name, old, new, higher, failed))
    return deltas


def unmatched(baseline: Sequence[CaseResult], current: Sequence[CaseResult]) -> tuple[list[str], list[str]]:
    """Case ids only in the baseline, and only in the current run."""
    old, new = {r.case_id for r in baseline}, {r.case_id for r in current}
    return sorted(old - new), sorted(new - old)
