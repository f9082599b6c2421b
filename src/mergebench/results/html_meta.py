"""A run as the results page shows it: its cases, what produced them, and the bootstrap behind its intervals.

The metadata section answers what a reader of a shared page asks before trusting a number: which
commit and machine, which suite and selection, how many items each task rests on, and what each
merge method computed (its version, hyperparameters and semantics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mergebench.results import CaseResult, read_results
from mergebench.results.html_assets import table

if TYPE_CHECKING:
    from mergebench.results.uncertainty import Bootstrap


@dataclass
class Run:
    """One results file (or one pytest session) on the page; ``boot`` is None when its cases carry no per-item values."""

    name: str
    results: list[CaseResult]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    boot: "Bootstrap | None" = None


def make_run(name: str, results: Sequence[CaseResult], meta: dict[str, Any] | None = None, *, source: str = "",
             boot: "Bootstrap | None" = None, seed: int | None = None, resamples: int | None = None) -> Run:
    """A run with its bootstrap: ``boot`` when given (the session's own), else made here when the cases carry items."""
    results = list(results)
    if boot is None and any(r.items is not None for r in results):
        from mergebench.results.uncertainty import RESAMPLES, SEED, Bootstrap

        boot = Bootstrap(results, seed=SEED if seed is None else seed,
                         resamples=RESAMPLES if resamples is None else resamples)
    return Run(name, results, dict(meta or {}), source, boot)


def read_runs(paths: Sequence[Path | str], *, seed: int | None = None, resamples: int | None = None) -> list[Run]:
    """One run per results file, named by its file name (made unique), with the file's ``meta``."""
    return runs_of([(path, *read_results(path)) for path in paths], seed=seed, resamples=resamples)


def runs_of(files: Sequence[tuple[Path | str, Sequence[CaseResult], dict[str, Any]]], *,
            boots: Mapping[str, "Bootstrap"] | None = None, seed: int | None = None,
            resamples: int | None = None) -> list[Run]:
    """:func:`read_runs` of files already read: (path, cases, meta); ``boots`` are bootstraps already drawn, by path."""
    runs, names = [], set()
    for given, results, meta in files:
        path = Path(given)
        name, n = path.stem, 2
        while name in names:
            name, n = f"{path.stem} ({n})", n + 1
        names.add(name)
        drawn = (boots or {}).get(str(given)) if any(r.items is not None for r in results) else None
        runs.append(make_run(name, results, meta, source=str(path), boot=drawn, seed=seed, resamples=resamples))
    return runs


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _semantics(results: Sequence[CaseResult]) -> str:
    """The merge semantics of the cases (the methods as published unless a case says otherwise)."""
    found = sorted({str(getattr(r, "semantics", "") or "paper") for r in results})
    return ", ".join(found)


def metadata_section(run: Run) -> str:
    meta, results = run.meta, run.results
    boot = run.boot
    suites = sorted({r.suite for r in results if r.suite}) or [str((meta.get("options") or {}).get("suite", "—"))]
    facts = [
        ("results file", run.source or "this pytest session"),
        ("commit", meta.get("commit") or "not recorded (results written before the page; re-run to record it)"),
        ("machine", meta.get("machine") or "not recorded"),
        ("device", meta.get("device") or "not recorded"),
        ("mergebench", meta.get("mergebench_version") or "not recorded"),
        ("python", meta.get("python") or "not recorded"),
        ("suite", ", ".join(suites)),
        ("selection", meta.get("options") or "not recorded"),
        ("cases", f"{len(results)} ({len({r.model for r in results})} model(s), {len({r.method for r in results})} "
                  f"method(s), {len({r.task for r in results})} task(s))"),
        ("merge semantics", _semantics(results)),
        ("intervals", "none: these results carry no per-item values" if boot is None else
         f"{100 * boot.level:.0f}% percentile bootstrap over items, {boot.resamples} resamples, seed {boot.seed}"),
    ]
    shown = {"commit", "machine", "device", "mergebench_version", "python", "options"}
    facts += [(key, value) for key, value in sorted(meta.items()) if key not in shown]
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(_text(v))}</dd>" for k, v in facts)
    return (f"<h3>About this run</h3><dl class=meta>{rows}</dl>"
            f"<h4>Items per task</h4>{_items_table(results)}<h4>Merge methods</h4>{_methods_table(results)}")


def _items_table(results: Sequence[CaseResult]) -> str:
    seen: dict[tuple[str, str], CaseResult] = {}
    for r in results:
        seen.setdefault((r.model, r.task), r)
    body = "".join(
        f"<tr><td>{escape(m)}</td><th scope=row class=row>{escape(t)}</th><td>{escape(r.domain)}</td>"
        f"<td>{escape(r.metric)} {'↑' if r.higher_is_better else '↓'}</td>"
        f'<td class="num" data-value="{r.items.items if r.items else r.merged.n}">{r.items.items if r.items else r.merged.n}</td>'
        f'<td class="num" data-value="{r.merged.n}">{r.merged.n}</td>'
        f"<td><code>{escape(r.items.fingerprint[:12]) if r.items else 'no per-item values'}</code></td></tr>"
        for (m, t), r in seen.items())
    return table("What each score rests on (items are the resampling units; IFEval's prompts hold several instruction "
                 "values)", ("model", "task", "domain", "metric", "items", "values", "item list"), (), [body])


def _methods_table(results: Sequence[CaseResult]) -> str:
    seen: dict[tuple[str, str], CaseResult] = {}
    for r in results:
        seen.setdefault((r.model, r.method), r)
    body = "".join(
        f"<tr><td>{escape(m)}</td><th scope=row class=row>{escape(method)}</th><td>{escape(r.method_version or '—')}</td>"
        f"<td><code>{escape(json.dumps(r.params, sort_keys=True)) if r.params else '—'}</code></td>"
        f"<td>{escape(_semantics([r]))}</td></tr>"
        for (m, method), r in seen.items())
    return table("What each method computed", ("model", "method", "version", "hyperparameters", "semantics"), (), [body])
