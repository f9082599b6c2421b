"""Rich tables of a run, laid out like the study's: tasks as rows, methods as columns.

* per model, raw scores per task with base and expert columns (the study's Tables 10-17);
* per model, each expert against the base on its own domain (the sanity check users asked for);
* per model, normalized performance per domain and overall (the "Avg. Norm" rows);
* across models, overall normalized multi-task performance (Table 8) and forgetting (Table 9);
* what the cache reused.

Every score and normalized score carries its 95% bootstrap interval (:mod:`mergebench.results.uncertainty`)
on a second line of its cell, and the normalized tables mark, per row, the best method (●) and the
methods whose paired difference to it is within item noise (○). The comparison with a baseline is
drawn by :mod:`mergebench.results.comparison_report`.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.table import Table

from mergebench.results import (
    CaseResult,
    Score,
    domain_scores,
    group_by_model_method,
    overall_normalized,
)
from mergebench.results.uncertainty import ties_with_best
from mergebench.specs import GENERAL

if TYPE_CHECKING:
    from mergebench.results.uncertainty import Bootstrap, Interval

BEST, TIED = "●", "○"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _score(score: Score | None, stderr: bool = True) -> str:
    if score is None:
        return "—"
    return f"{score.score:.3f} ±{score.stderr:.3f}" if stderr else f"{score.score:.3f}"


def _bounds(found: "Interval | None", percent: bool = False) -> str:
    """An interval's bounds, compactly: ``81–95`` (percent) or ``0.19–0.58``."""
    if found is None:
        return ""
    if percent:
        return f"{100 * found.lo:.0f}–{100 * found.hi:.0f}"
    return f"{found.lo:.2f}–{found.hi:.2f}"


def _with_interval(text: str, found: "Interval | None", percent: bool = False) -> str:
    """A cell: the value, and its interval dimmed on the line below (none when unknown)."""
    return text if found is None else f"{text}\n[dim]{_bounds(found, percent)}[/]"


def _task_cell(score: Score | None, found: "Interval | None", detail: bool) -> str:
    """A per-task cell: the mean, with its interval below (or ±stderr for results without per-item values)."""
    if score is None:
        return "—"
    if not detail:
        return f"{score.score:.3f}"
    return _with_interval(f"{score.score:.3f}", found) if found is not None else _score(score)


def _header(name: str) -> str:
    """A long ``snake_case`` header broken at the underscore nearest its middle, instead of being cut."""
    if len(name) <= 10 or "_" not in name:
        return name
    cuts = [i for i, c in enumerate(name) if c == "_"]
    cut = min(cuts, key=lambda i: abs(i - len(name) / 2))
    return f"{name[:cut + 1]}\n{name[cut + 1:]}"


def _methods(results: Sequence[CaseResult]) -> list[str]:
    return list(dict.fromkeys(r.method for r in results))


def per_task_table(results: Sequence[CaseResult], model: str, detail: bool = True,
                   boot: "Bootstrap | None" = None) -> Table:
    """Scores per task; ``detail``: each with its interval (``boot``) or ±stderr, else means only."""
    rows = [r for r in results if r.model == model]
    methods = _methods(rows)
    shown = detail and boot is not None
    uncertainty = "95% interval below" if boot is not None else "±stderr"
    title = f"mean, {uncertainty}" if detail else f"mean; {'intervals' if boot else 'standard errors'} in the JSON"
    table = Table(title=f"{model}: scores per task ({title})", title_justify="left")
    table.add_column("task\n[dim]metric (items)[/]", no_wrap=True)
    table.add_column("base", justify="right", style="dim", no_wrap=True)
    table.add_column("expert", justify="right", style="dim", no_wrap=True)
    for method in methods:
        table.add_column(_header(method), justify="right", no_wrap=True)
    for task in dict.fromkeys(r.task for r in rows):
        by_method = {r.method: r for r in rows if r.task == task}
        first = next(iter(by_method.values()))
        arrow = "↑" if first.higher_is_better else "↓"

        def cell(r: CaseResult, role: str) -> str:
            found = boot.role_interval(r, role) if shown else None  # type: ignore[union-attr]
            return _task_cell(r.role_score(role), found, detail)

        table.add_row(f"{task}\n[dim]{first.metric} {arrow} ({_items(first)})[/]", cell(first, "base"),
                      cell(first, "expert"), *[cell(by_method[m], "merged") if m in by_method else "" for m in methods])
    return table


def _items(r: CaseResult) -> str:
    """The item count, and the values it holds when items hold several (IFEval: prompts and instructions)."""
    if r.items is not None and r.items.items != r.merged.n:
        return f"{r.items.items} items, {r.merged.n} values"
    return str(r.merged.n)


def expert_gain(base: Score | None, expert: Score | None, higher_is_better: bool) -> float | None:
    """The expert's relative improvement over the base (positive = better, also for lower-is-better metrics)."""
    if base is None or expert is None or base.score == 0:
        return None
    change = (expert.score - base.score) / abs(base.score)
    return change if higher_is_better else -change


def expert_table(results: Sequence[CaseResult], model: str, boot: "Bootstrap | None" = None) -> Table | None:
    """Each expert against the base on its own domain's tasks: normalized scores mean nothing if an expert is no better."""
    rows = {r.task: r for r in results if r.model == model and r.domain != GENERAL and r.expert is not None}
    if not rows:
        return None
    table = Table(title=f"{model}: each expert vs the base on its own domain (sanity check)", title_justify="left")
    for column in ("domain", "task"):
        table.add_column(column, no_wrap=True)
    for column in ("base", "expert", "expert gain"):
        table.add_column(column if boot is None else f"{column} (95% interval)", justify="right", no_wrap=True)
    for task, r in sorted(rows.items(), key=lambda item: (item[1].domain, item[0])):
        gain = expert_gain(r.base, r.expert, r.higher_is_better)
        if gain is None and r.base is not None and r.expert is not None:  # the base scored 0: say by how much, absolutely
            change = (r.expert.score - r.base.score) * (1 if r.higher_is_better else -1)
            verdict = f"[green]+{change:.3f} (from 0)[/]" if change > 0 else f"[red]{change:.3f} (not better)[/]"
        else:
            spread = _gain_bounds(boot, r) if gain is not None else ""
            verdict = "—" if gain is None else (f"[green]+{100 * gain:.1f}%[/]{spread}" if gain > 0
                                                else f"[red]{100 * gain:.1f}% (not better)[/]{spread}")
        table.add_row(r.domain, f"{task} {'↑' if r.higher_is_better else '↓'}", _reference(r, "base", boot),
                      _reference(r, "expert", boot), verdict)
    return table


def _gain_bounds(boot: "Bootstrap | None", r: CaseResult) -> str:
    """`` (+8 to +39%)``: the interval of the expert's gain, expert and base resampled on the same items."""
    if boot is None:
        return ""
    import numpy as np

    from mergebench.results.uncertainty import quantiles

    base, expert = boot.task_replicates(r, "base"), boot.task_replicates(r, "expert")
    if base is None or expert is None:
        return ""
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = (expert - base) / np.abs(base) * (1 if r.higher_is_better else -1)
    gains = gains[np.isfinite(gains)]
    if gains.size == 0:
        return ""
    lo, hi = quantiles(gains, [(1 - boot.level) / 2, (1 + boot.level) / 2])
    return f" [dim]({100 * lo:+.0f} to {100 * hi:+.0f}%)[/]"


def _reference(r: CaseResult, role: str, boot: "Bootstrap | None") -> str:
    found = boot.role_interval(r, role) if boot is not None else None
    score = r.role_score(role)
    if found is None or score is None:
        return _score(score)
    return f"{score.score:.3f} ({_bounds(found)})"


def _marks(boot: "Bootstrap | None", model: str, methods: Sequence[str], key, run: str = "") -> dict[str, str]:
    """`` ●`` for the best method on a (higher-is-better) value, `` ○`` for those within item noise of it."""
    if boot is None or len(methods) < 2:
        return {}
    best, tied = ties_with_best(boot, model, methods, key, run)
    return {m: f" {BEST}" if m in best else f" {TIED}" if m in tied else "" for m in methods}


def _pct_cell(value: float | None, boot: "Bootstrap | None", model: str, method: str, key, mark: str,
              star: str = "") -> str:
    found = boot.interval(model, method, key) if boot is not None else None
    return _with_interval(_pct(value) + star + mark, found, percent=True)


def domain_table(results: Sequence[CaseResult], model: str, boot: "Bootstrap | None" = None) -> Table | None:
    rows = [r for r in results if r.model == model and r.domain != GENERAL]
    if not rows:
        return None
    methods = _methods(rows)
    table = Table(title=f"{model}: normalized performance (% of the domain's expert)", title_justify="left")
    table.add_column("domain", no_wrap=True)
    for method in methods:
        table.add_column(_header(method), justify="right", no_wrap=True)
    per_method = {m: {d.domain: d for d in domain_scores(g)} for (_, m), g in group_by_model_method(rows).items()}
    for domain in dict.fromkeys(r.domain for r in rows):
        key = ("domain", domain)
        marks = _marks(boot, model, methods, key)
        cells = []
        for method in methods:
            score = per_method.get(method, {}).get(domain)
            cells.append("" if score is None else _pct_cell(score.normalized, boot, model, method, key, marks.get(method, ""),
                                                            "*" if score.mixed_directions else ""))
        table.add_row(domain, *cells)
    key = ("normalized", "overall")
    marks = _marks(boot, model, methods, key)
    table.add_row("overall", *[_pct_cell(overall_normalized([r for r in rows if r.method == m]), boot, model, m, key,
                                         marks.get(m, "")) for m in methods], style="bold")
    return table


def summary_table(results: Sequence[CaseResult], *, forgetting: bool, boot: "Bootstrap | None" = None) -> Table | None:
    rows = [r for r in results if (r.domain == GENERAL) == forgetting]
    if not rows:
        return None
    methods = _methods(rows)
    title = ("Forgetting: general tasks, % of the base model (100 = nothing forgotten)" if forgetting
             else "Normalized multi-task performance, % of the experts (the study's Table 8)")
    table = Table(title=title, title_justify="left")
    table.add_column("model", no_wrap=True)
    for method in methods:
        table.add_column(_header(method), justify="right", no_wrap=True)
    key = ("forgetting" if forgetting else "normalized", "overall")
    for model in dict.fromkeys(r.model for r in rows):
        present = [m for m in methods if any(r.model == model and r.method == m for r in rows)]
        marks = _marks(boot, model, present, key)
        table.add_row(model, *[
            _pct_cell(overall_normalized([r for r in rows if r.model == model and r.method == m], forgetting=forgetting),
                      boot, model, m, key, marks.get(m, "")) if m in present else "—"
            for m in methods
        ])
    return table


def runtime_table(results: Sequence[CaseResult]) -> Table:
    """Wall-clock cost per method, split as the study's Figure 4 does."""
    from mergebench.results.plots import runtime_seconds

    table = Table(title="Runtime: algorithm (merge, incl. statistics) and validation (hyperparameter search)",
                  title_justify="left")
    for column in ("model", "method"):
        table.add_column(column, no_wrap=True)
    for column in ("algorithm s", "validation s", "total s"):
        table.add_column(column, justify="right")
    for (model, method), group in group_by_model_method(results).items():
        algorithm, validation = runtime_seconds(group)
        table.add_row(model, method, f"{algorithm:.1f}", f"{validation:.1f}", f"{algorithm + validation:.1f}")
    return table


def cache_summary(results: Sequence[CaseResult]) -> str:
    hit_everywhere: dict[tuple[str, str], bool] = {}
    for r in results:
        for event in r.artifacts:
            key = (event["stage"], event["digest"])
            hit_everywhere[key] = hit_everywhere.get(key, True) and event["hit"]
    reused = sum(1 for hit in hit_everywhere.values() if hit)
    return f"artifacts: {reused} reused from cache, {len(hit_everywhere) - reused} built in this run"


SEMANTICS_HEADERS = {
    "paper": "the merge methods as published (their papers and the study's text)",
    "study-code": "the merge methods as the study's released code computes them (uiuctml/MergeBench b245648)",
}


def semantics_header(semantics: str) -> str:
    """The line that opens a run's tables, so that no table mixes the two semantics unseen."""
    return f"Semantics: {semantics} — {SEMANTICS_HEADERS.get(semantics, 'declared by a plugin')}; see docs/fidelity.md"


def render_session(results: Sequence[CaseResult], *, width: int = 120, color: bool = False,
                   boot: "Bootstrap | None" = None) -> str:
    """The session's tables as text; ``boot`` (made here when the results carry per-item values) gives the intervals.

    The per-task table shows each score's interval below it when that fits ``width``, else means
    only (the intervals stay in the JSON); no table is squeezed below the width its cells need.
    Results of different semantics get one set of tables each, under its own header.
    """
    by_semantics: dict[str, list[CaseResult]] = {}
    for r in results:
        by_semantics.setdefault(r.semantics, []).append(r)
    if len(by_semantics) > 1:  # each group resamples on its own: one model and method may be in both
        return "\n".join(render_session(group, width=width, color=color) for group in by_semantics.values())
    if boot is None and any(r.items is not None for r in results):
        from mergebench.results.uncertainty import Bootstrap

        boot = Bootstrap(results)
    models = list(dict.fromkeys(r.model for r in results))
    tables = []
    for model in models:
        per_task = per_task_table(results, model, True, boot)
        if needed_width(per_task) > width:  # too wide for the terminal: means only
            per_task = per_task_table(results, model, False, boot)
        tables += [per_task, expert_table(results, model, boot), domain_table(results, model, boot)]
    for forgetting in (False, True):
        if forgetting or len(models) > 1:
            tables.append(summary_table(results, forgetting=forgetting, boot=boot))
    tables.append(runtime_table(results))
    buffer = io.StringIO()
    console = wide_console(buffer, width, color)
    console.print(semantics_header(next(iter(by_semantics), "paper")), style="bold", soft_wrap=True)
    for table in tables:
        if table is not None:
            console.print(table)
    for note in _notes(results, boot):
        console.print(note, style="dim", width=width)
    console.print(cache_summary(results), width=width)
    return buffer.getvalue()


WIDEST = 400
"""Characters a table may take: tables are drawn at their natural width, wider than the terminal
rather than cutting a value (an interval cut to ``8.35–8…`` says nothing)."""


def wide_console(file, width: int, color: bool) -> Console:
    """A console on which tables take the width their cells need; give prose ``width=`` to wrap it."""
    return Console(file=file, width=max(width, WIDEST), force_terminal=color, color_system="standard" if color else None)


def needed_width(table: Table) -> int:
    """How many characters ``table`` takes when nothing is squeezed."""
    from rich.measure import Measurement

    probe = Console(width=WIDEST, file=io.StringIO())
    return Measurement.get(probe, probe.options, table).maximum


def _notes(results: Sequence[CaseResult], boot: "Bootstrap | None") -> list[str]:
    notes = []
    if any(r.normalized is None for r in results):
        notes.append("— : no reference score (no expert for that domain, or the reference scored 0)")
    if any(d.mixed_directions for g in group_by_model_method(results).values() for d in domain_scores(g)):
        notes.append("* : the domain mixes higher- and lower-is-better metrics, so it is the mean of its tasks' ratios")
    notes.append("Domain score = mean of its tasks; normalized = merged domain score / expert domain score "
                 "(inverted for lower-is-better metrics); overall = mean over domains.")
    if boot is not None:
        notes.append(f"Below each value: its 95% interval, a percentile bootstrap over items ({boot.resamples} "
                     f"resamples, seed {boot.seed}) that resamples merged model and reference together. "
                     f"{BEST} best method of the row; {TIED} not distinguishable from it (the 95% interval of the "
                     "paired difference, on the same resampled items, contains 0). Ties are not corrected for "
                     "multiple comparisons.")
    lacking = sorted({r.task for r in results if r.items is None})
    if lacking and len(lacking) == len({r.task for r in results}):
        notes.append("No intervals: these results carry no per-item values (written before mergebench kept them); "
                     "re-run to get them.")
    elif lacking:
        notes.append(f"No intervals for values built on {', '.join(lacking)}: no per-item values (the task reports "
                     "none, or its models were scored on different items).")
    return notes
