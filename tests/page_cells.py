"""Read a results page with the standard library's HTML parser: its value cells, resources and images, as tests check them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

from mergebench.results import write_json
from tests.item_results import binary, item_case


@dataclass
class Cell:
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Page(HTMLParser):
    cells: dict[str, list[Cell]] = field(default_factory=dict)
    references: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, attribute, value)
    images: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    _open: list[Cell] = field(default_factory=list)

    def __post_init__(self) -> None:
        HTMLParser.__init__(self)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        for name in ("src", "href", "action", "poster", "data", "srcset"):
            if name in found:
                self.references.append((tag, name, found[name]))
        if tag == "img":
            self.images.append(found.get("src", ""))
        if tag == "section":
            self.sections.append(found.get("id", ""))
        if tag == "td":
            cell = Cell(found)
            self._open.append(cell)
            if "data-cell" in found:
                self.cells.setdefault(found["data-cell"], []).append(cell)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for cell in self._open:
            cell.text += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def methods_run(seed: int = 0, gap: float = 0.15, n: int = 60) -> list:
    """Three methods on two domains and one general task: ``best`` ahead of ``worse`` by ``gap``, ``close`` within noise."""
    rng = np.random.default_rng(seed)
    out = []
    for task, domain in (("gsm8k_mini", "math"), ("humaneval_mini", "coding"), ("mmlu_mini", "general")):
        expert = None if domain == "general" else binary(rng, n, 0.8)
        base = binary(rng, n, 0.5)
        best = binary(rng, n, 0.7)
        worse = best.copy()
        worse[np.flatnonzero(worse)[: int(gap * n)]] = 0.0
        close = best.copy()
        close[np.flatnonzero(close == 0)[:1]] = 1.0
        close[np.flatnonzero(close)[:2]] = 0.0
        for method, values, seconds in (("best", best, 12.0), ("worse", worse, 3.5), ("close", close, 40.25)):
            case = item_case(task, domain, values, expert, base, method=method, model="smol")
            case.merge_seconds, case.validation_seconds = seconds, seconds / 4
            out.append(case)
    return out


def write_results(path: Path, results: list, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    write_json(results, path, meta=meta or {"commit": "0123456789abcdef", "machine": "ci-box"})
    return json.loads(path.read_text())
