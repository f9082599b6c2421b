"""The results page in a real headless Chromium: it loads without console errors, shows the results file's numbers,
decodes its figures and sorts its columns.

Chromium comes from the Debian packages (``apt-get install -y chromium``, as ``.ci/run`` does) and is driven by
Playwright, which is told to launch that browser and never downloads its own. Where either is missing the test
skips, saying which and how to install it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mergebench.results.html import write_page
from mergebench.results.html_meta import read_runs
from tests.page_cells import methods_run, write_results

REAL = os.environ.get("MERGEBENCH_PAGE_RESULTS")
"""A results file of a real run (``pytest benchmarks --mb-json run.json``) to check as well."""
CHROMIUM = Path(os.environ.get("MERGEBENCH_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (Debian), or set MERGEBENCH_CHROMIUM")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


def _open(browser, path: Path, *, script: bool = True):
    context = browser.new_context(java_script_enabled=script)
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                  else route.abort())  # the page must need nothing else; a fetch would show as a failed request
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url[:80]}"))
    page.goto(path.as_uri(), wait_until="load")
    return page, problems


@pytest.fixture(params=["synthetic", "real run"])
def results(request, tmp_path):
    """(results file, its JSON): three methods with known ties, and a real run's when MERGEBENCH_PAGE_RESULTS names one."""
    if request.param == "real run":
        if not REAL:
            pytest.skip("set MERGEBENCH_PAGE_RESULTS=run.json (a --mb-json file) to check a real run's page too")
        return Path(REAL), json.loads(Path(REAL).read_text())
    return tmp_path / "results.json", write_results(tmp_path / "results.json", methods_run())


CELLS = """() => Array.from(document.querySelectorAll('td[data-cell]')).map(td => [td.dataset.cell, td.dataset.value,
                td.dataset.lo || null, td.dataset.hi || null, td.innerText])"""


def test_the_page_loads_cleanly_and_holds_the_results_numbers(browser, results, tmp_path):
    source, data = results
    path = write_page(read_runs([source]), tmp_path / "page")
    page, problems = _open(browser, path)
    cells: dict[str, list] = {}
    for key, value, lo, hi, text in page.evaluate(CELLS):
        cells.setdefault(key, []).append((value, lo, hi, text))
    for value in data["intervals"]["values"]:
        for shown, lo, hi, text in cells[f"{source.stem}|{value['model']}|{value['method']}|{value['kind']}|{value['name']}"]:
            assert float(shown) == pytest.approx(value["value"], rel=1e-12)
            assert (lo, hi) == (None, None) if "lo" not in value else (float(lo), float(hi)) == (value["lo"], value["hi"])
            number = f"{value['value']:.3f}" if value["kind"] == "task" else f"{100 * value['value']:.1f}"
            assert text.startswith(number), (text, number)
    for case in data["cases"]:
        ((shown, _, _, text),) = cells[f"{source.stem}|{case['model']}|{case['method']}|task|{case['task']}"]
        assert float(shown) == case["merged"]["score"] and text.startswith(f"{case['merged']['score']:.3f}")
    widths = page.evaluate("() => Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(widths) == 2 and all(done and w > 0 and h > 0 for done, w, h in widths), widths
    assert problems == []
    page.context.close()


def _column(page, table: int, column: int) -> list[str]:
    return page.evaluate(f"""() => Array.from(document.querySelectorAll('table.sortable')[{table}]
                             .querySelectorAll('tbody.rows tr')).map(r => r.cells[{column}].dataset.value
                             || r.cells[{column}].innerText)""")


def test_clicking_a_header_sorts_its_column_both_ways(browser, tmp_path):
    write_results(tmp_path / "results.json", methods_run())
    path = write_page(read_runs([tmp_path / "results.json"]), tmp_path / "page")
    page, problems = _open(browser, path)
    leaderboard = page.locator("table.sortable").first
    assert [float(v) for v in _column(page, 0, 2)] == sorted((float(v) for v in _column(page, 0, 2)), reverse=True)
    leaderboard.locator("thead th").nth(4).get_by_role("button").click()  # merge + validation seconds
    seconds = [float(v) for v in _column(page, 0, 4)]
    assert seconds == sorted(seconds, reverse=True) == [40.25 * 1.25, 12.0 * 1.25, 3.5 * 1.25]
    assert leaderboard.locator("thead th").nth(4).get_attribute("aria-sort") == "descending"
    leaderboard.locator("thead th").nth(4).get_by_role("button").click()
    assert [float(v) for v in _column(page, 0, 4)] == sorted(seconds)
    leaderboard.locator("thead th").nth(1).get_by_role("button").click()  # by name, text
    assert [t.strip() for t in _column(page, 0, 1)] == ["worse", "close", "best"]
    domains = page.locator("table.sortable").nth(1)  # base and expert rows stay above the sorted methods
    domains.locator("thead th").nth(1).get_by_role("button").click()
    assert page.evaluate("() => Array.from(document.querySelectorAll('table.sortable')[1].tBodies[0].rows)"
                         ".map(r => r.cells[0].innerText)") == ["base", "expert"]
    assert problems == []
    page.context.close()


def test_without_script_the_tables_read_in_full(browser, results, tmp_path):
    source, data = results
    path = write_page(read_runs([source]), tmp_path / "page")
    page, problems = _open(browser, path, script=False)
    keys = {row[0] for row in page.evaluate(CELLS)}
    assert {f"{source.stem}|{c['model']}|{c['method']}|task|{c['task']}" for c in data["cases"]} <= keys
    assert page.locator("th button").count() == 0  # no sort buttons: plain headers
    assert problems == []
    page.context.close()
