"""A results page to share: one self-contained HTML file with the leaderboard, tables, runtimes, figures and metadata.

Self-contained means it opens from a mail attachment, a CI artifact or a static host as it is:
the style sheet and the sorting script are inline, the figures are PNG ``data:`` URIs, and it
refers to no other resource. Every table is complete in the HTML; the script only adds sorting.

Each value's cell carries what a reader or a test needs to check it against the results file:
``data-cell`` (``run|model|method-or-role|kind|name``), ``data-value`` (the exact float) and, where
the results carry per-item values, ``data-lo``/``data-hi`` (its 95% bootstrap interval, the same
numbers as the results file's ``intervals``). Several results files make one section each, a
navigation list to them, and a side-by-side table of every run's leaderboard values.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import replace
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mergebench.errors import UsageError
from mergebench.results import CaseResult, domain_scores, overall_normalized, ratio
from mergebench.results.html_assets import CSS, JS
from mergebench.results.html_assets import table as _table
from mergebench.results.html_meta import Run, metadata_section
from mergebench.specs import GENERAL

if TYPE_CHECKING:
    from mergebench.results.uncertainty import Bootstrap, Interval

PAGE = "index.html"
BEST, TIED = "●", "○"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _bounds(found: "Interval | None", percent: bool) -> str:
    if found is None:
        return ""
    return f"{100 * found.lo:.0f}–{100 * found.hi:.0f}" if percent else f"{found.lo:.3f}–{found.hi:.3f}"


def _td(text: str, value: float | None = None, found: "Interval | None" = None, *, cell: str = "",
        percent: bool = False, mark: str = "") -> str:
    """A value's cell: the shown text, its exact value and interval as data attributes, the interval below it."""
    attrs = f' data-cell="{escape(cell)}"' if cell else ""
    if value is not None:
        attrs += f' data-value="{value!r}"'
    if found is not None:
        attrs += f' data-lo="{found.lo!r}" data-hi="{found.hi!r}"'
    inner = escape(text)
    if mark:
        title = "best of the column" if mark == BEST else "not distinguishable from the best on the same items"
        inner += f' <span class="mark {"best" if mark == BEST else "tie"}" title="{title}">{mark}</span>'
    if found is not None:
        inner += f'<br><span class="ci">{_bounds(found, percent)}</span>'
    return f'<td class="num"{attrs}>{inner}</td>'


def _row(label: str, cells: Sequence[str]) -> str:
    return f'<tr><th scope="row" class="row">{escape(label)}</th>{"".join(cells)}</tr>'


def _marks(boot: "Bootstrap | None", model: str, methods: Sequence[str], key) -> dict[str, str]:
    if boot is None or len(methods) < 2:
        return {}
    from mergebench.results.uncertainty import ties_with_best

    best, tied = ties_with_best(boot, model, methods, key)
    return {m: BEST if m in best else TIED if m in tied else "" for m in methods}


def _interval(boot: "Bootstrap | None", model: str, method: str, key) -> "Interval | None":
    return None if boot is None else boot.interval(model, method, key)


def _methods(rows: Sequence[CaseResult]) -> list[str]:
    return list(dict.fromkeys(r.method for r in rows))


def _seconds(rows: Sequence[CaseResult]) -> tuple[float, float]:
    from mergebench.results.plots import runtime_seconds

    return runtime_seconds(rows)


def leaderboard(run: Run, model: str) -> str:
    """Methods ranked by normalized multi-task performance, with forgetting and cost beside it (the study's Tables 8-9)."""
    rows = [r for r in run.results if r.model == model]
    methods = _methods(rows)
    boot, cells = run.boot, {}
    keys = {"normalized": ("normalized", "overall"), "forgetting": ("forgetting", "overall")}
    marks = {kind: _marks(boot, model, methods, key) for kind, key in keys.items()}
    for m in methods:
        group = [r for r in rows if r.method == m]
        cells[m] = (overall_normalized(group), overall_normalized(group, forgetting=True), sum(_seconds(group)))
    order = sorted(methods, key=lambda m: (cells[m][0] is None, -(cells[m][0] or 0.0)))
    body = []
    for rank, m in enumerate(order, 1):
        normalized, forgetting, seconds = cells[m]
        body.append("<tr>" + _td(str(rank), rank, cell=f"{run.name}|{model}|{m}|rank|normalized")
                    + f'<th scope="row" class="row">{escape(m)}</th>' + "".join(
            _td(_pct(v), v, _interval(boot, model, m, keys[kind]), cell=f"{run.name}|{model}|{m}|{kind}|overall",
                percent=True, mark=marks[kind].get(m, "")) for kind, v in (("normalized", normalized), ("forgetting", forgetting)))
            + _td(f"{seconds:.1f}", seconds, cell=f"{run.name}|{model}|{m}|runtime|total") + "</tr>")
    headers = ["#", "method", "multi-task<br><span class=sub>% of the experts, 95% interval</span>",
               "forgetting<br><span class=sub>general tasks, % of the base</span>", "merge + validation s"]
    return _table(f"{escape(model)}: leaderboard ({BEST} best of the column, {TIED} tied with it on the same items)",
                  headers, [], body)


def _reference_rows(rows: Sequence[CaseResult]) -> list[CaseResult]:
    """The cases with the base in the merged model's place, to score the base by the same formulas."""
    out = []
    for r in rows:
        if r.base is not None and r.expert is not None:
            out.append(replace(r, merged=r.base, normalized=ratio(r.base.score, r.expert.score, r.higher_is_better)))
    return out


def domain_table(run: Run, model: str) -> str | None:
    """Normalized performance per domain and overall: base and expert rows, then one row per method."""
    rows = [r for r in run.results if r.model == model and r.domain != GENERAL]
    if not rows:
        return None
    domains = list(dict.fromkeys(r.domain for r in rows))
    methods, boot = _methods(rows), run.boot
    keys = [("domain", d) for d in domains] + [("normalized", "overall")]
    marks = {key: _marks(boot, model, methods, key) for key in keys}
    first = {r.task: r for r in rows if r.method == methods[0]}
    as_base = _reference_rows(list(first.values()))
    base = {d.domain: d.normalized for d in domain_scores(as_base)}
    base["overall"] = overall_normalized(as_base) if len(as_base) == len(first) else None
    refs = [_row("base", [_td(_pct(base.get(name)), base.get(name), cell=f"{run.name}|{model}|base|{kind}|{name}")
                          for kind, name in keys]),
            _row("expert", [_td("100.0", 1.0, cell=f"{run.name}|{model}|expert|{kind}|{name}") for kind, name in keys])]
    body = []
    for m in methods:
        group = [r for r in rows if r.method == m]
        values = {d.domain: d.normalized for d in domain_scores(group)}
        values["overall"] = overall_normalized(group)
        body.append(_row(m, [_td(_pct(values.get(name)), values.get(name), _interval(boot, model, m, (kind, name)),
                                 cell=f"{run.name}|{model}|{m}|{kind}|{name}", percent=True,
                                 mark=marks[(kind, name)].get(m, "")) for kind, name in keys]))
    headers = ["method"] + [escape(d) for d in domains] + ["overall"]
    return _table(f"{escape(model)}: normalized performance per domain, % of the domain's expert", headers, refs, body)


def task_table(run: Run, model: str) -> str:
    """Raw scores per task, each with its 95% interval: base and expert rows, then one row per method."""
    rows = [r for r in run.results if r.model == model]
    tasks = list(dict.fromkeys(r.task for r in rows))
    first = {t: next(r for r in rows if r.task == t) for t in tasks}
    boot = run.boot

    def cell(r: CaseResult | None, role: str, label: str) -> str:
        score = None if r is None else r.role_score(role)
        if score is None:
            return "<td></td>" if r is None else _td("—")
        found = boot.role_interval(r, role) if boot is not None and r.items is not None else None
        return _td(f"{score.score:.3f}", score.score, found, cell=f"{run.name}|{model}|{label}|task|{r.task}")

    refs = [_row(role, [cell(first[t], role, role) for t in tasks]) for role in ("base", "expert")]
    body = []
    for m in _methods(rows):
        by_task = {r.task: r for r in rows if r.method == m}
        body.append(_row(m, [cell(by_task.get(t), "merged", m) for t in tasks]))
    headers = ["method"] + [f'{escape(t)}<br><span class=sub>{escape(first[t].domain)}, {escape(first[t].metric)} '
                           f'{"↑" if first[t].higher_is_better else "↓"}, {first[t].merged.n} values</span>' for t in tasks]
    return _table(f"{escape(model)}: score per task (↑ higher is better, ↓ lower), 95% interval below", headers, refs, body)


def runtime_table(run: Run, model: str) -> str:
    """Seconds per method, split as the study's Figure 4: the merge algorithm (with statistics) and validation."""
    rows = [r for r in run.results if r.model == model]
    split = {m: _seconds([r for r in rows if r.method == m]) for m in _methods(rows)}
    widest = max((a + v for a, v in split.values()), default=0.0) or 1.0
    body = []
    for m, (algorithm, validation) in split.items():
        bar = (f'<td><div class="bar" role="img" aria-label="algorithm {algorithm:.1f} s, validation {validation:.1f} s">'
               f'<span class="alg" style="width:{100 * algorithm / widest:.1f}%"></span>'
               f'<span class="val" style="width:{100 * validation / widest:.1f}%"></span></div></td>')
        body.append(_row(m, [_td(f"{algorithm:.1f}", algorithm, cell=f"{run.name}|{model}|{m}|runtime|algorithm"),
                             _td(f"{validation:.1f}", validation, cell=f"{run.name}|{model}|{m}|runtime|validation"),
                             _td(f"{algorithm + validation:.1f}", algorithm + validation,
                                 cell=f"{run.name}|{model}|{m}|runtime|total"), bar]))
    headers = ["method", "algorithm s", "validation s", "total s",
               '<span class="key" style="background:#4a7fb0"></span> algorithm '
               '<span class="key" style="background:#e29a3b"></span> validation']
    return _table(f"{escape(model)}: runtime (one measurement each, on the machine below: no interval)", headers, [], body)


def figures(run: Run) -> str:
    """The run's PNG figures (:mod:`mergebench.results.plots`), inline as data: URIs."""
    from mergebench.results.plots import write_plots

    out = []
    with tempfile.TemporaryDirectory(prefix="mergebench-figures-") as tmp:
        for path in write_plots(run.results, Path(tmp) / "figure", boot=run.boot):
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            title = path.stem.removeprefix("figure-").replace("-", " ")
            out.append(f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
                       f"<figcaption class=note>{escape(title)}</figcaption></figure>")
    return "".join(out)


def run_section(run: Run, anchor: str) -> str:
    parts = [f'<section id="{anchor}"><h2>{escape(run.name)}</h2>']
    for model in dict.fromkeys(r.model for r in run.results):
        parts += [f"<h3>{escape(model)}</h3>", "<h4>Leaderboard</h4>", leaderboard(run, model)]
        domains = domain_table(run, model)
        if domains:
            parts += ["<h4>Per domain</h4>", domains]
        parts += ["<h4>Per task</h4>", task_table(run, model), "<h4>Runtime</h4>", runtime_table(run, model)]
    shown = figures(run)
    if shown:
        parts += ["<h3>Figures</h3>", shown]
    parts += [metadata_section(run), "</section>"]
    return "".join(parts)


def side_by_side(runs: Sequence[Run]) -> str:
    """Every run's leaderboard values in columns, one row per (model, method) found in any run."""
    pairs = list(dict.fromkeys((r.model, r.method) for run in runs for r in run.results))
    headers = ["model · method"] + [f"{escape(run.name)}<br><span class=sub>{kind}</span>"
                                    for run in runs for kind in ("multi-task %", "forgetting %")]
    body = []
    for model, method in pairs:
        cells = []
        for run in runs:
            group = [r for r in run.results if r.model == model and r.method == method]
            for kind, forgetting in (("normalized", False), ("forgetting", True)):
                value = overall_normalized(group, forgetting=forgetting) if group else None
                cells.append(_td(_pct(value) if group else "", value, _interval(run.boot, model, method, (kind, "overall")),
                                 cell=f"{run.name}|{model}|{method}|{kind}|overall", percent=True))
        body.append(_row(f"{model} · {method}", cells))
    return _table("Runs side by side: each value with its 95% interval (intervals of different runs are not paired here)",
                  headers, [], body)


def _origin(run: Run) -> str:
    """Where a run comes from, to tell runs apart in the list: its file, commit, machine and size."""
    commit = str(run.meta.get("commit") or "")[:8]
    parts = [run.source, f"commit {commit}" if commit else "", str(run.meta.get("machine") or ""), f"{len(run.results)} cases"]
    return " · ".join(p for p in parts if p)


def render_page(runs: Sequence[Run], *, title: str = "mergebench results") -> str:
    anchors = [f"run-{i + 1}" for i in range(len(runs))]
    nav = ""
    if len(runs) > 1:
        links = "".join(f'<li><a href="#{a}">{escape(run.name)}</a> <span class=note>{escape(_origin(run))}</span></li>'
                        for a, run in zip(anchors, runs))
        nav = f"<nav><h2>Runs</h2><ul>{links}</ul>{side_by_side(runs)}</nav>"
    intro = ("<p class=lede>Normalized performance is the merged model's score as a percentage of the expert's on "
             "that domain (inverted for lower-is-better metrics; 100 = as good as the expert); forgetting is the "
             "merged model's score on general tasks as a percentage of the base model's (100 = nothing forgotten). "
             f"Below each value: its 95% interval, a percentile bootstrap over items. {BEST} best of the column; "
             f"{TIED} not distinguishable from the best (the interval of the paired difference on the same resampled "
             "items contains 0; not corrected for multiple comparisons). Click a column's header to sort.</p>")
    sections = "".join(run_section(run, a) for a, run in zip(anchors, runs))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{escape(title)}</h1>{intro}</header>{nav}<main>{sections}</main>"
            f"<script>{JS}</script></body></html>\n")


def check_page_dir(directory: Path | str, option: str = "--html") -> None:
    """Refuse, before any work, a page directory that is a file (or lies under one)."""
    for path in (Path(directory), *Path(directory).parents):
        if path.exists():
            if not path.is_dir():
                raise UsageError(f"{option} {directory}: {path} is a file; give a directory to write {PAGE} into")
            return


def write_page(runs: Sequence[Run], directory: Path | str, *, title: str = "mergebench results") -> Path:
    """Write ``directory``/index.html atomically (a temp file renamed into place); return its path."""
    directory = Path(directory)
    check_page_dir(directory)
    if not runs or not any(run.results for run in runs):
        raise UsageError("the results hold no cases: nothing to put on a page")
    text = render_page(runs, title=title)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PAGE
    tmp = directory / f".{PAGE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
