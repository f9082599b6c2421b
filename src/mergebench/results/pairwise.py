"""Every pair of methods of a model, compared paired on the same items (``mergebench report --pairwise``).

Methods are scored on the same items, so the difference between two of them is bootstrapped on
the same item draws (:meth:`~mergebench.results.uncertainty.Bootstrap.difference`): the item
difficulty both share cancels, and the interval is that of the difference itself, narrower than
two overlapping intervals suggest. A domain's winner is the method ahead when the interval of the
difference excludes 0, else a tie.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

from rich.table import Table

from mergebench.results import CaseResult
from mergebench.results.uncertainty import Bootstrap, Interval
from mergebench.specs import GENERAL


def _winner(found: Interval | None) -> str:
    """``A``, ``B`` or ``tie`` for a difference A − B, with the difference in points."""
    if found is None:
        return "—"
    who = "A" if found.lo > 0 else "B" if found.hi < 0 else "tie"
    return f"{who} {100 * found.value:+.1f}"


def _interval(found: Interval | None) -> str:
    if found is None:
        return "—"
    return f"{100 * found.value:+.1f} [{100 * found.lo:+.1f}, {100 * found.hi:+.1f}]"


def pairwise_table(results: Sequence[CaseResult], model: str, boot: Bootstrap) -> Table | None:
    rows = [r for r in results if r.model == model]
    methods = list(dict.fromkeys(r.method for r in rows))
    if len(methods) < 2:
        return None
    domains = list(dict.fromkeys(r.domain for r in rows if r.domain != GENERAL))
    general = any(r.domain == GENERAL for r in rows)
    table = Table(title=f"{model}: methods compared pairwise on the same items (A − B, percentage points of the "
                        "normalized score)", title_justify="left")
    table.add_column("A vs B", no_wrap=True)
    table.add_column("overall A − B\n[dim][95% interval][/]", justify="right", no_wrap=True)
    for domain in domains:
        table.add_column(f"{domain}\n[dim]winner[/]", justify="right", no_wrap=True)
    if general:
        table.add_column("forgetting\n[dim]winner[/]", justify="right", no_wrap=True)
    for a, b in combinations(methods, 2):
        cells = [_interval(boot.difference(model, a, b, ("normalized", "overall")))]
        cells += [_winner(boot.difference(model, a, b, ("domain", d))) for d in domains]
        if general:
            cells.append(_winner(boot.difference(model, a, b, ("forgetting", "overall"))))
        table.add_row(f"{a} vs {b}", *cells)
    return table


def pairwise_note(boot: Bootstrap) -> str:
    return (f"A or B: that method is ahead (the 95% interval of the paired difference excludes 0); tie: it "
            f"includes 0. Percentile bootstrap over items, {boot.resamples} resamples, seed {boot.seed}; "
            "not corrected for multiple comparisons.")
