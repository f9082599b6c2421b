"""When ``-k`` or ``-m`` deselects every benchmark case, say where matching cases are and the option that selects them.

``pytest benchmarks -k "ties and gemma"`` collects the default ``mini`` suite, which has no Gemma model: pytest
reports "126 deselected" and stops. Here the same filter is tried on the cases of the other suites (and, when no
method was named, of the opt-in methods), each judged as pytest judges the deselected items: the same node names,
test-function keywords and markers, with the case's id and marks swapped in.

Under xdist the workers collect and none writes to the terminal: each puts the hint in its ``workeroutput``, and
the controller prints it in the summary.
"""

from __future__ import annotations

from typing import Callable

import pytest

from mergebench.case import Case
from mergebench.pytest_plugin import is_worker

deselected_key = pytest.StashKey[list]()
hint_key = pytest.StashKey[list]()
relayed_key = pytest.StashKey[list]()
WORKEROUTPUT_KEY = "mergebench_selection_hint"


def _case(item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("mb_case") if callspec is not None else None
    return case if isinstance(case, Case) else None  # an empty selection parametrizes with a placeholder


def pytest_deselected(items) -> None:
    cases = [item for item in items if _case(item) is not None]
    if cases:
        cases[0].config.stash.setdefault(deselected_key, []).extend(cases)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    deselected = config.stash.get(deselected_key, [])
    if not deselected or any(_case(item) is not None for item in session.items):
        return
    lines = hint_lines(config, deselected[0], len(deselected), nothing_left=not session.items)
    config.stash[hint_key] = lines
    if is_worker(config) and lines:
        config.workeroutput[WORKEROUTPUT_KEY] = lines


def pytest_report_collectionfinish(config: pytest.Config, items) -> list[str] | None:
    """A serial run: the hint right under pytest's "collected N items / N deselected" line."""
    return config.stash.get(hint_key, None) or None


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: keep the hint a worker computed (every worker computes the same one)."""
    lines = (getattr(node, "workeroutput", None) or {}).get(WORKEROUTPUT_KEY)
    if lines:
        node.config.stash[relayed_key] = lines


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for line in config.stash.get(relayed_key, []):
        terminalreporter.write_line(line)


def hint_lines(config: pytest.Config, template: pytest.Item, deselected: int, *, nothing_left: bool) -> list[str]:
    """The options that would select cases the filters keep; or, when nothing runs at all, what the filters see."""
    from mergebench import plugin_manager
    from mergebench.errors import MergebenchError
    from mergebench.pytest_plugin import selection_options
    from mergebench.selection import SUITE_DESCRIPTIONS, widenings

    keyword = (config.getoption("keyword") or "").strip()
    markexpr = (config.getoption("markexpr") or "").strip()
    filters = " and ".join(f"{flag} {text!r}" for flag, text in (("-k", keyword), ("-m", markexpr)) if text)
    registries = plugin_manager.registries()
    try:
        keep = case_filter(keyword, markexpr, template, registries)
        found = widenings(registries, selection_options(config), keep)
    except (MergebenchError, SyntaxError):
        return []
    if found:
        width = max(len(w.option) for w in found)
        lines = [f"mergebench: {filters} deselected all {deselected} cases of this run; "
                 "matching cases are selected by adding one of these options:"]
        for w in found:
            about = SUITE_DESCRIPTIONS.get(w.suite, "")
            count = f"{len(w.cases)} case" + ("s" if len(w.cases) > 1 else "")
            lines.append(f"  {w.option:<{width}}  {count}, e.g. {w.cases[0].id}"
                         + (f"  ({about})" if about else ""))
        return lines
    if not nothing_left:
        return []
    domains = sorted({t.domain for t in registries.tasks.specs()})
    families = sorted({m.family for m in registries.methods.specs()} | {"other"})
    return [f"mergebench: {filters} matches no case of any suite with these options. -k matches parts of case ids, which read "
            "MODEL-METHOD-TASK (`--collect-only -q` lists them); -m matches markers: the task's domain "
            f"({', '.join(domains)}) and the method's family ({', '.join(families)})"]


def case_filter(keyword: str, markexpr: str, template: pytest.Item, registries) -> Callable:
    """Whether ``-k``/``-m`` would keep a case, judged on ``template`` (a deselected case item) with the case swapped in.

    Raises SyntaxError for an expression pytest itself rejects (pytest has said so already).
    """
    from _pytest.mark import KeywordMatcher
    from _pytest.mark.expression import Expression

    from mergebench.pytest_plugin import case_marks

    keyword_expr = Expression.compile(keyword) if keyword else None
    mark_expr = Expression.compile(markexpr) if markexpr else None
    own = _case(template)
    own_marks = [_identity(d.mark) for d in case_marks(own, registries)]
    shared_marks = [m for m in template.iter_markers() if _identity(m) not in own_marks]
    names = set(KeywordMatcher.from_item(template)._names) - {template.name} - {m.name for m in template.iter_markers()}
    names |= {m.name for m in shared_marks}

    def keep(case) -> bool:
        marks = shared_marks + [d.mark for d in case_marks(case, registries)]
        if mark_expr is not None and not mark_expr.evaluate(_mark_matcher(marks)):
            return False
        if keyword_expr is None:
            return True
        item_names = names | {template.name.replace(own.id, case.id)} | {m.name for m in marks}
        return keyword_expr.evaluate(KeywordMatcher(item_names))

    return keep


def _identity(mark) -> tuple:
    return mark.name, mark.args, sorted(mark.kwargs.items())


def _mark_matcher(marks):
    from _pytest.mark import MarkMatcher

    if hasattr(MarkMatcher, "from_markers"):  # pytest >= 8.3: -m may match marks' keyword arguments
        return MarkMatcher.from_markers(marks)
    return MarkMatcher({m.name for m in marks})
