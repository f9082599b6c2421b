"""A run against its baseline, as a user reads it: every change with its interval, what the gate can see, what failed.

One table (:func:`comparison_table`), then sentences (:func:`gate_lines`): each failed value with
its drop, the drop's interval, the test and the smallest drop the gate can see; drops past a
threshold that the test calls noise; values gated on point estimates and why; tasks compared
unpaired; and per threshold, the smallest drop it can see over the values it gates.
"""

from __future__ import annotations

from typing import Sequence

from rich import box
from rich.table import Table

PERCENT_KINDS = ("normalized", "forgetting", "domain")


def _number(value: float, signed: bool = False) -> str:
    """One decimal, or two significant digits for what one decimal would show as 0.0."""
    sign = "+" if signed else ""
    return f"{value:{sign}.1f}" if abs(value) >= 0.05 or value == 0 else f"{value:{sign}.2g}"


def _percent(d) -> bool:
    return d.kind in PERCENT_KINDS or d.rate


def _fmt(d, value: float, signed: bool = False) -> str:
    """A value or a difference in the value's units: percentage points for normalized values and rates, raw otherwise."""
    if _percent(d):
        return f"{_number(100 * value, signed)}pp"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _label(d) -> str:
    return d.kind if d.name == "overall" else f"{d.kind}:{d.name}"


def _level(d, value: float) -> str:
    return f"{100 * value:.1f}%" if _percent(d) else f"{value:.4g}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _interval(d) -> str:
    t = d.test
    if t is None or not t.tested:
        return "—"
    if _percent(d):
        return f"[{_number(100 * t.lo)}, {_number(100 * t.hi)}]"
    return f"[{t.lo:.3g}, {t.hi:.3g}]"


def _verdict(d, test: str) -> str:
    if d.failed_by:
        return "FAILED"
    if d.passed_threshold:
        return "within noise"
    if d.gated_by and d.test is not None and not d.test.tested and test != "point":
        return "point rule"
    return ""


def comparison_table(deltas, baseline_name: str, *, alpha: float = 0.05, test: str = "bootstrap") -> Table:
    """Baseline vs current for every compared value, grouped by (model, method); failures in red."""
    rule = "point estimates" if test == "point" else f"one-sided bootstrap test at α {alpha:g}"
    table = Table(title=f"Compared with {baseline_name} (gate: {rule}; drop > 0 is worse)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    table.add_column("value", no_wrap=True)
    for column in ("baseline", "current", "change", "drop 95% int.", "p", "detects ≥"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    group = None
    for d in deltas:
        if (d.model, d.method) != group:
            group = (d.model, d.method)
            table.add_row(f"[bold]{d.model} · {d.method}[/]", "", "", "", "", "", "", "")
        t = d.test
        tested = t is not None and t.tested
        table.add_row(f"  {_label(d)}", _level(d, d.baseline), _level(d, d.current), _fmt(d, d.change, signed=True),
                      _interval(d), _p(t.p) if tested else "—",
                      _fmt(d, t.detectable) if tested and t.detectable is not None else "—", _verdict(d, test),
                      style="bold red" if d.failed_by else None)
    return table


def render(table: Table, width: int, color: bool) -> str:
    """The table as text, as wide as its columns need (wider than ``width`` rather than cutting the value names)."""
    import io

    from mergebench.results.report import wide_console

    buffer = io.StringIO()
    wide_console(buffer, width, color).print(table)
    return buffer.getvalue()


def _evidence(d, alpha: float) -> str:
    t = d.test
    if t is None or not t.tested:
        return f"not tested ({t.untested})" if t is not None else "not tested"
    sees = (f"this gate sees drops of {_fmt(d, t.detectable)} or more" if t.detectable is not None
            else "every item scored the same in both runs, so the detectable drop is unknown")
    verdict = "<" if t.p <= alpha else "≥"
    p = _p(t.p)
    return (f"drop {_fmt(d, t.drop)} (95% interval {_interval(d)}), p{p if p.startswith('<') else '=' + p} "
            f"{verdict} α {alpha:g}, "
            f"{t.pairing} on {t.items} items; with {t.items} items {sees}")


def gate_lines(deltas, *, alpha: float = 0.05, test: str = "bootstrap") -> list[tuple[str, str]]:
    """``(style, sentence)`` pairs after the table: failures, drops within noise, fallbacks, pairing, what each threshold sees."""
    lines = []
    for d in deltas:
        head = (f"{d.model} · {d.method} {_label(d)}: {_level(d, d.baseline)} → {_level(d, d.current)} "
                f"({_fmt(d, d.change, signed=True)})")
        if d.failed_by:
            lines.append(("bold red", f"REGRESSION {head} breaks {d.failed_by}: {_evidence(d, alpha)}"))
        elif d.passed_threshold:
            lines.append(("yellow", f"WITHIN NOISE {head} passes {d.passed_threshold} in amount but the test does "
                                    f"not call it a drop: {_evidence(d, alpha)}"))
    untested: dict[str, int] = {}
    for d in deltas:
        if d.gated_by and d.test is not None and not d.test.tested and test != "point":
            untested[d.test.untested] = untested.get(d.test.untested, 0) + 1
    for reason, count in untested.items():
        lines.append(("yellow", f"POINT RULE for {count} gated value(s): {reason}; they fail on the point estimate alone"))
    unpaired = sorted({d.test.pairing for d in deltas if d.test is not None and d.test.tested and d.test.pairing != "paired"})
    for pairing in unpaired:
        lines.append(("yellow", f"ITEMS DIFFER from the baseline (another item list, task version or task set): "
                                f"values compared {pairing}, with independent resamples of the two runs"))
    for threshold in dict.fromkeys(t for d in deltas for t in d.gated_by):
        lines.append(("", _threshold_line(threshold, [d for d in deltas if threshold in d.gated_by])))
    return lines


def _span(values: Sequence[float], d, fmt=None) -> str:
    fmt = fmt or (lambda v: _fmt(d, v))
    low, high = min(values), max(values)
    return fmt(low) if fmt(low) == fmt(high) else f"{fmt(low)}–{fmt(high)}"


def _threshold_line(threshold: str, gated) -> str:
    tested = [d for d in gated if d.test is not None and d.test.tested and d.test.detectable is not None]
    if not tested:
        return f"{threshold} gates {len(gated)} value(s); none could be tested, so it reads point estimates"
    d = tested[0]
    seen = [t.test.detectable for t in tested]
    allowed = [t.allowed[t.gated_by.index(threshold)] for t in gated]
    items = _span([t.test.items for t in tested], d, str)
    what = f"{d.model} · {d.method} {_label(d)}" if len(gated) == 1 else f"{len(gated)} values"
    line = (f"{threshold} on {what}: with {items} items this gate sees drops of {_span(seen, d)} or more "
            f"(80% power); its threshold allows {_span(allowed, d)}")
    return line + (": drops in between may pass as item noise" if max(allowed) < min(seen) else "")


def regression_lines(deltas, *, alpha: float = 0.05) -> list[str]:
    """One sentence per failed value: what, how much, which threshold, and the evidence."""
    return [text for style, text in gate_lines(deltas, alpha=alpha) if text.startswith("REGRESSION")]
