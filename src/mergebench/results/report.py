"""Rich tables of a run, laid out like the study's: tasks as rows, methods as columns.

* per model, raw scores per task with base and expert columns (the study's Tables 10-17);
* per model, each expert against the base on its own domain (the sanity check users asked for);
* per model, normalized performance per domain and overall (the "Avg. Norm" rows);
* across models, overall normalized multi-task performance (Table 8) and forgetting (Table 9);
* what the cache reused.
"""

from __future__ import annotations

import io
from typing import Sequence

from rich.console import Console
from rich.table import Table

from mergebench.results import (
    CaseResult,
    Score,
    domain_scores,
    group_by_model_method,
    overall_normalized,
)
from mergebench.specs import GENERAL


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _score(score: Score | None, stderr: bool = True) -> str:
    if score is None:
        return "—"
    return f"{score.score:.3f} ±{score.stderr:.3f}" if stderr else f"{score.score:.3f}"


TASK_COLUMN = 34
"""Characters for the task column (name, metric, item count)."""


def layout(width: int, methods: Sequence[str]) -> tuple[int, bool]:
    """``(console width, show ±stderr)``: tables get the room their columns need instead of being squeezed.

    A per-task cell needs 12 characters with the standard error and 5 without, or its method's
    header if wider. A terminal too narrow for the former drops the standard errors (they stay in
    the JSON); narrower still, the tables are drawn wider than the terminal rather than cut.
    """
    def needed(cell: int) -> int:
        headers = [max(map(len, _header(m).split("\n"))) for m in methods]
        return TASK_COLUMN + 2 * (cell + 3) + sum(max(cell, h) + 3 for h in headers) + 1

    if width >= needed(12):
        return width, True
    return max(width, needed(5)), False


def _header(name: str) -> str:
    """A long ``snake_case`` header broken at the underscore nearest its middle, instead of being cut."""
    if len(name) <= 10 or "_" not in name:
        return name
    cuts = [i for i, c in enumerate(name) if c == "_"]
    cut = min(cuts, key=lambda i: abs(i - len(name) / 2))
    return f"{name[:cut + 1]}\n{name[cut + 1:]}"


def _methods(results: Sequence[CaseResult]) -> list[str]:
    return list(dict.fromkeys(r.method for r in results))


def per_task_table(results: Sequence[CaseResult], model: str, stderr: bool = True) -> Table:
    rows = [r for r in results if r.model == model]
    methods = _methods(rows)
    title = "mean ±stderr" if stderr else "mean; standard errors in the JSON"
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
        table.add_row(f"{task}\n[dim]{first.metric} {arrow} ({first.merged.n})[/]", _score(first.base, stderr),
                      _score(first.expert, stderr),
                      *[_score(by_method[m].merged, stderr) if m in by_method else "" for m in methods])
    return table


def expert_gain(base: Score | None, expert: Score | None, higher_is_better: bool) -> float | None:
    """The expert's relative improvement over the base (positive = better, also for lower-is-better metrics)."""
    if base is None or expert is None or base.score == 0:
        return None
    change = (expert.score - base.score) / abs(base.score)
    return change if higher_is_better else -change


def expert_table(results: Sequence[CaseResult], model: str) -> Table | None:
    """Each expert against the base on its own domain's tasks: normalized scores mean nothing if an expert is no better."""
    rows = {r.task: r for r in results if r.model == model and r.domain != GENERAL and r.expert is not None}
    if not rows:
        return None
    table = Table(title=f"{model}: each expert vs the base on its own domain (sanity check)", title_justify="left")
    for column in ("domain", "task"):
        table.add_column(column, no_wrap=True)
    for column in ("base", "expert", "expert gain"):
        table.add_column(column, justify="right", no_wrap=True)
    for task, r in sorted(rows.items(), key=lambda item: (item[1].domain, item[0])):
        gain = expert_gain(r.base, r.expert, r.higher_is_better)
        if gain is None and r.base is not None and r.expert is not None:  # the base scored 0: say by how much, absolutely
            change = (r.expert.score - r.base.score) * (1 if r.higher_is_better else -1)
            verdict = f"[green]+{change:.3f} (from 0)[/]" if change > 0 else f"[red]{change:.3f} (not better)[/]"
        else:
            verdict = "—" if gain is None else (f"[green]+{100 * gain:.1f}%[/]" if gain > 0 else f"[red]{100 * gain:.1f}% (not better)[/]")
        table.add_row(r.domain, f"{task} {'↑' if r.higher_is_better else '↓'}", _score(r.base), _score(r.expert), verdict)
    return table


def domain_table(results: Sequence[CaseResult], model: str) -> Table | None:
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
        cells = []
        for method in methods:
            score = per_method.get(method, {}).get(domain)
            cells.append("" if score is None else _pct(score.normalized) + ("*" if score.mixed_directions else ""))
        table.add_row(domain, *cells)
    table.add_row("overall", *[_pct(overall_normalized([r for r in rows if r.method == m])) for m in methods], style="bold")
    return table


def summary_table(results: Sequence[CaseResult], *, forgetting: bool) -> Table | None:
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
    for model in dict.fromkeys(r.model for r in rows):
        table.add_row(model, *[
            _pct(overall_normalized([r for r in rows if r.model == model and r.method == m], forgetting=forgetting))
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


def _delta_cells(d) -> tuple[str, str, str, str]:
    percent = d.kind in ("normalized", "forgetting", "domain")
    fmt = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.4g}")
    change = f"{100 * d.change:+.1f}pp" if percent else f"{d.change:+.4g}"
    label = d.kind if d.name == "overall" else f"{d.kind}:{d.name}"
    return label, fmt(d.baseline), fmt(d.current), change


def comparison_table(deltas, baseline_name: str) -> Table:
    """Baseline vs current for every compared value, grouped by (model, method); failures in red."""
    from rich import box

    table = Table(title=f"Compared with {baseline_name}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("value", overflow="fold")
    for column in ("baseline", "current", "change"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    group = None
    for d in deltas:
        if (d.model, d.method) != group:
            group = (d.model, d.method)
            table.add_row(f"[bold]{d.model} · {d.method}[/]", "", "", "", "")
        label, old, new, change = _delta_cells(d)
        table.add_row(f"  {label}", old, new, change, "FAILED" if d.failed_by else "", style="bold red" if d.failed_by else None)
    return table


def regression_lines(deltas) -> list[str]:
    """One sentence per failed value: what, how much, which threshold."""
    lines = []
    for d in deltas:
        if d.failed_by:
            label, old, new, change = _delta_cells(d)
            lines.append(f"REGRESSION {d.model} · {d.method} {label}: {old} → {new} ({change}) breaks {d.failed_by}")
    return lines


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


def render_session(results: Sequence[CaseResult], *, width: int = 120, color: bool = False) -> str:
    by_semantics: dict[str, list[CaseResult]] = {}
    for r in results:
        by_semantics.setdefault(r.semantics, []).append(r)
    if len(by_semantics) > 1:  # one set of tables per semantics, each under its own header
        return "\n".join(render_session(group, width=width, color=color) for group in by_semantics.values())
    buffer = io.StringIO()
    width, stderr = layout(width, _methods(results))
    console = Console(file=buffer, width=width, force_terminal=color, color_system="standard" if color else None)
    models = list(dict.fromkeys(r.model for r in results))
    console.print(semantics_header(next(iter(by_semantics), "paper")), style="bold", soft_wrap=True)
    for model in models:
        console.print(per_task_table(results, model, stderr))
        for table in (expert_table(results, model), domain_table(results, model)):
            if table is not None:
                console.print(table)
    for forgetting in (False, True):
        table = summary_table(results, forgetting=forgetting)
        if table is not None and (forgetting or len(models) > 1):
            console.print(table)
    console.print(runtime_table(results))
    notes = []
    if any(r.normalized is None for r in results):
        notes.append("— : no reference score (no expert for that domain, or the reference scored 0)")
    if any(d.mixed_directions for g in group_by_model_method(results).values() for d in domain_scores(g)):
        notes.append("* : the domain mixes higher- and lower-is-better metrics, so it is the mean of its tasks' ratios")
    notes.append("Domain score = mean of its tasks; normalized = merged domain score / expert domain score "
                 "(inverted for lower-is-better metrics); overall = mean over domains.")
    for note in notes:
        console.print(note, style="dim")
    console.print(cache_summary(results))
    return buffer.getvalue()
