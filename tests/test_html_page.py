"""The results page read by the standard library's HTML parser: every number of the results file in its cell, nothing fetched."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from tests.page_cells import methods_run, parse, write_results
from tests.test_cli import run

RUN = "results"


def _page(tmp_path, *files):
    done = run("report", *map(str, files), "--html", str(tmp_path / "page"), env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert f"written: {tmp_path / 'page' / 'index.html'}" in " ".join(done.stdout.split())
    return parse(tmp_path / "page" / "index.html")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One results file of three methods and its page, made once through ``mergebench report --html``."""
    folder = tmp_path_factory.mktemp("page")
    data = write_results(folder / f"{RUN}.json", methods_run())
    return folder, data, _page(folder, folder / f"{RUN}.json")


def _one(page, key):
    """The cell of ``key``; a value shown in two tables (a leaderboard's and a domain table's overall) must agree."""
    cells = page.cells[key]
    assert len({(c.attrs.get("data-value"), c.attrs.get("data-lo"), c.attrs.get("data-hi"), c.text) for c in cells}) == 1, key
    return cells[0]


def check_every_value(page, data, run: str) -> int:
    """Every case's scores and every value of the file's ``intervals`` in its cell: exact value, bounds and shown text."""
    for case in data["cases"]:
        for role, label in (("merged", case["method"]), ("base", "base"), ("expert", "expert")):
            key = f"{run}|{case['model']}|{label}|task|{case['task']}"
            if case[role] is None:
                assert key not in page.cells
                continue
            cell = _one(page, key)
            assert float(cell.attrs["data-value"]) == case[role]["score"]
            assert cell.text.startswith(f"{case[role]['score']:.3f}")
    checked = 0
    for value in data["intervals"]["values"]:
        cell = _one(page, f"{run}|{value['model']}|{value['method']}|{value['kind']}|{value['name']}")
        assert float(cell.attrs["data-value"]) == pytest.approx(value["value"], rel=1e-12)
        if "lo" not in value:
            assert "data-lo" not in cell.attrs
            continue
        assert (float(cell.attrs["data-lo"]), float(cell.attrs["data-hi"])) == (value["lo"], value["hi"])
        if value["kind"] == "task":
            assert cell.text == f"{value['value']:.3f}{value['lo']:.3f}–{value['hi']:.3f}"
        else:  # a percentage, its mark, then its interval in whole percent
            shown = cell.text.replace(" ●", "").replace(" ○", "")
            assert shown == f"{100 * value['value']:.1f}{100 * value['lo']:.0f}–{100 * value['hi']:.0f}"
        checked += 1
    return checked


def test_every_score_and_interval_of_the_results_file_is_in_its_cell(made):
    _, data, page = made
    assert check_every_value(page, data, RUN) == len(data["intervals"]["values"]) > 20


@pytest.mark.skipif(not os.environ.get("MERGEBENCH_PAGE_RESULTS"),
                    reason="set MERGEBENCH_PAGE_RESULTS=run.json (a --mb-json file) to check a real run's page too")
def test_a_real_runs_page_holds_every_value_of_its_results_file(tmp_path):
    source = Path(os.environ["MERGEBENCH_PAGE_RESULTS"])
    data = json.loads(source.read_text())
    assert check_every_value(_page(tmp_path, source), data, source.stem) > 0


def test_the_leaderboard_ranks_methods_and_marks_the_best_and_its_ties(made):
    page = made[2]
    text = {m: _one(page, f"{RUN}|smol|{m}|normalized|overall").text for m in ("best", "worse", "close")}
    assert "●" in text["best"] and "○" in text["close"]
    assert "●" not in text["worse"] and "○" not in text["worse"]
    assert [_one(page, f"{RUN}|smol|{m}|rank|normalized").text for m in ("best", "close", "worse")] == ["1", "2", "3"]


def test_runtimes_are_split_into_algorithm_and_validation(made):
    page = made[2]
    for method, seconds in (("best", 12.0), ("worse", 3.5), ("close", 40.25)):
        algorithm = _one(page, f"{RUN}|smol|{method}|runtime|algorithm")
        validation = _one(page, f"{RUN}|smol|{method}|runtime|validation")
        total = _one(page, f"{RUN}|smol|{method}|runtime|total")
        assert (float(algorithm.attrs["data-value"]), float(validation.attrs["data-value"])) == (seconds, seconds / 4)
        assert total.text == f"{seconds * 1.25:.1f}"


def test_the_page_fetches_nothing_and_inlines_its_figures(made):
    folder, _, page = made
    html = (folder / "page" / "index.html").read_text()
    assert "<link" not in html and "<script src" not in html and "@import" not in html and "url(" not in html
    assert "http://" not in html and "https://" not in html
    for tag, attribute, value in page.references:
        assert value.startswith(("#", "data:image/png;base64,")), (tag, attribute, value[:40])
    assert len(page.images) == 2
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.tags.count("script") == 1
    assert "0123456789abcdef" in html and "ci-box" in html  # the run's commit and machine


def test_several_results_files_make_one_section_each_and_a_side_by_side_table(tmp_path):
    (tmp_path / "b").mkdir()
    first = write_results(tmp_path / f"{RUN}.json", methods_run(seed=0))
    second = write_results(tmp_path / "b" / f"{RUN}.json", methods_run(seed=1)[:6])  # a second run of two tasks
    page = _page(tmp_path, tmp_path / f"{RUN}.json", tmp_path / "b" / f"{RUN}.json")
    assert page.sections == ["run-1", "run-2"]
    html = (tmp_path / "page" / "index.html").read_text()
    for source in (tmp_path / f"{RUN}.json", tmp_path / "b" / f"{RUN}.json"):  # the list tells runs of one name apart
        assert f"{source} · commit 01234567 · ci-box · " in html
    for name, data in ((RUN, first), (f"{RUN} (2)", second)):
        for value in data["intervals"]["values"]:
            if value["kind"] in ("normalized", "forgetting"):
                cells = page.cells[f"{name}|{value['model']}|{value['method']}|{value['kind']}|overall"]
                assert len(cells) >= 2  # the run's own leaderboard and the side-by-side table
                assert all((float(c.attrs["data-lo"]), float(c.attrs["data-hi"])) == (value["lo"], value["hi"]) for c in cells)
    missing = page.cells[f"{RUN} (2)|smol|best|forgetting|overall"]  # the second run has no general task
    assert [(c.text, "data-value" in c.attrs) for c in missing] == [("—", False)] * 2


def test_results_without_per_item_values_show_values_without_intervals(tmp_path):
    from tests.test_results import case

    write_results(tmp_path / "old.json", [case("gsm8k", "math", merged=0.2, expert=0.4)])
    page = _page(tmp_path, tmp_path / "old.json")
    cell = _one(page, "old|m|soup|normalized|overall")
    assert cell.attrs["data-value"] == "0.5" and "data-lo" not in cell.attrs and cell.text == "50.0"
    assert "none: these results carry no per-item values" in (tmp_path / "page" / "index.html").read_text()


def test_a_page_directory_that_is_a_file_is_refused_before_any_work(made, tmp_path):
    (tmp_path / "taken").write_text("mine")
    done = run("report", str(made[0] / f"{RUN}.json"), "--html", str(tmp_path / "taken"))
    assert done.returncode == 2
    assert f"--html {tmp_path / 'taken'}: {tmp_path / 'taken'} is a file; give a directory to write index.html into" in \
        " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and done.stdout == ""  # refused before the tables
    assert (tmp_path / "taken").read_text() == "mine"


def test_pytest_writes_the_page_at_the_end_of_a_run(bench, tmp_path):
    tiny = ["--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math,toy_coding", "--mb-methods", "soup"]
    result = bench.runpytest_subprocess(*tiny, "--mb-json", str(tmp_path / "run.json"), "--mb-html", str(tmp_path / "page"))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"written: {tmp_path / 'page' / 'index.html'}"])
    data = json.loads((tmp_path / "run.json").read_text())
    assert len(data["meta"]["commit"]) in (40, 5)  # a commit, or "nogit" outside a repository
    page = parse(tmp_path / "page" / "index.html")
    assert check_every_value(page, data, "run") == len([v for v in data["intervals"]["values"] if "lo" in v]) > 0
    assert len(page.images) == 1  # performance vs time; no general task, so no forgetting figure

    (tmp_path / "taken").write_text("mine")
    refused = bench.runpytest_subprocess(*tiny, "--mb-html", str(tmp_path / "taken"))
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines([f"*--mb-html {tmp_path / 'taken'}: {tmp_path / 'taken'} is a file; give a directory*"])
    assert (tmp_path / "taken").read_text() == "mine"
