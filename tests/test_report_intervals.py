"""Intervals, ties and pairwise comparisons as a user reads them: the tables, ``mergebench report`` and its gate."""

from __future__ import annotations

import json
import os

import numpy as np

from mergebench.results import write_json
from mergebench.results.report import render_session
from tests.item_results import binary, item_case
from tests.test_cli import run
from tests.test_results import case


def _methods(rng, gap: float = 0.0, n: int = 200):
    """Three methods on the same items: ``best`` ahead of ``worse`` by ``gap`` items' worth, ``close`` within noise."""
    expert = {t: binary(rng, n, 0.8) for t in ("a", "b")}
    best = {t: binary(rng, n, 0.7) for t in ("a", "b")}
    out = []
    for t, domain in (("a", "math"), ("b", "coding")):
        worse = best[t].copy()
        worse[np.flatnonzero(worse)[: int(gap * n)]] = 0.0
        close = best[t].copy()
        close[np.flatnonzero(close == 0)[:1]] = 1.0
        close[np.flatnonzero(close)[:2]] = 0.0
        out += [item_case(t, domain, best[t], expert[t], method="best"),
                item_case(t, domain, worse, expert[t], method="worse"),
                item_case(t, domain, close, expert[t], method="close")]
    return out


def test_the_normalized_table_shows_intervals_and_marks_ties_with_the_best():
    text = render_session(_methods(np.random.default_rng(0), gap=0.1), width=200)
    table = text.split("normalized performance", 1)[1].split("Runtime", 1)[0]
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("│ overall"))
    value_line, interval_line = lines[at], lines[at + 1]
    cells = [c.strip() for c in value_line.split("│")[2:5]]
    assert cells[0].endswith("●") and cells[2].endswith("○") and not cells[1].endswith(("●", "○"))
    assert all("–" in c for c in interval_line.split("│")[2:5])  # lo–hi under every value
    assert "95% interval, a percentile bootstrap over items (2000 resamples, seed 0)" in " ".join(text.split())


def test_results_without_per_item_values_say_they_have_no_intervals():
    text = render_session([case("gsm8k", "math", merged=0.2, expert=0.4)], width=200)
    assert "No intervals: these results carry no per-item values" in " ".join(text.split())
    assert "●" not in text


def test_report_pairwise_prints_every_pair_with_the_paired_difference_and_domain_winners(tmp_path):
    path = write_json(_methods(np.random.default_rng(1), gap=0.15), tmp_path / "r.json")
    done = run("report", str(path), "--pairwise", env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in done.stdout.splitlines() if " vs " in line and "│" in line}
    assert set(rows) == {"best vs worse", "best vs close", "worse vs close"}
    overall, math, coding = rows["best vs worse"]
    assert overall.startswith("+") and "[+" in overall  # best ahead, interval above 0
    assert math.startswith("A +") and coding.startswith("A +")
    assert rows["best vs close"][1].startswith("tie")


def test_report_gate_fails_on_a_real_drop_and_passes_noise(tmp_path):
    rng = np.random.default_rng(2)
    expert, before = binary(rng, 400, 0.8), binary(rng, 400, 0.7)
    after = before.copy()
    after[np.flatnonzero(after)[:40]] = 0.0  # 10 points lower, on the same items
    base_path = write_json([item_case("t", "math", before, expert)], tmp_path / "baseline.json")
    bad = write_json([item_case("t", "math", after, expert)], tmp_path / "bad.json")
    done = run("report", str(bad), "--compare", str(base_path), "--fail", "normalized:2%")
    assert done.returncode == 1, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    assert "REGRESSION m · soup normalized: " in text and "breaks normalized:2%: drop " in text
    assert "paired on 400 items; with 400 items this gate sees drops of " in text
    same = run("report", str(base_path), "--compare", str(base_path), "--fail", "normalized:0")
    assert same.returncode == 0, same.stdout
    point = run("report", str(bad), "--compare", str(base_path), "--fail", "normalized:2%", "--test", "point")
    assert point.returncode == 1 and "gate: point estimates" in point.stdout


def test_report_bad_input_is_one_line_without_a_traceback(tmp_path):
    path = write_json([item_case("t", "math", [1, 0, 1], [1, 1, 1])], tmp_path / "r.json")
    payload = json.loads(path.read_text())
    payload["cases"][0]["merged"]["n"] = 5
    path.write_text(json.dumps(payload))
    done = run("report", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "case m-soup-t: per-item values do not match: merged has 3, expert has 3, where the case scored 5" in done.stderr
    done = run("report", str(tmp_path / "missing.json"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "missing.json does not exist; give a file written by pytest --mb-json FILE" in done.stderr
    done = run("report", str(tmp_path / "r.json"), "--alpha", "0.9")
    assert done.returncode == 2 and "--alpha 0.9: the gate's level must be in (0, 0.5]" in done.stderr


def test_report_against_an_older_baseline_gates_on_points_and_says_why(tmp_path):
    rng = np.random.default_rng(3)
    now = write_json([item_case("t", "math", binary(rng, 50, 0.5), binary(rng, 50, 0.5))], tmp_path / "now.json")
    old = {"mergebench_results": 1, "meta": {}, "cases": [case("t", "math", merged=0.5, expert=0.5).to_dict()]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    done = run("report", str(now), "--compare", str(tmp_path / "old.json"), "--fail", "task:t:50pp")
    text = " ".join(done.stdout.split())
    assert done.returncode == 0, text
    assert ("POINT RULE for 1 gated value(s): the baseline has no per-item values for t (saved before mergebench "
            "kept per-item values; save a new baseline with --mb-save)") in text
    nothing = run("report", str(now), "--compare", str(write_json([case("x", "coding", 0.1, 0.2, method="ties")],
                                                                   tmp_path / "other.json")), "--fail", "normalized:2%")
    assert nothing.returncode == 1 and "the gate compared nothing" in nothing.stdout


def test_report_combines_files_that_split_a_grid_and_keeps_two_runs_apart(tmp_path):
    cases = _methods(np.random.default_rng(3))
    best = write_json([c for c in cases if c.method == "best"], tmp_path / "best.json")
    rest = write_json([c for c in cases if c.method != "best"], tmp_path / "rest.json")
    again = write_json([c for c in cases if c.method == "best"], tmp_path / "again.json")
    env = {**os.environ, "COLUMNS": "200"}
    shards = run("report", str(best), str(rest), env=env)  # one grid in two files: one set of tables, all methods
    assert shards.returncode == 0, shards.stderr
    assert shards.stdout.count("Semantics: paper") == 1
    assert all(m in shards.stdout for m in ("best", "worse", "close"))
    runs = run("report", str(best), str(again), env=env)  # the same cases twice: two runs, each its own tables
    assert runs.returncode == 0, runs.stderr
    assert runs.stdout.count("Semantics: paper") == 2 and str(again) in runs.stdout
    refused = run("report", str(best), str(again), "--compare", str(rest))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{best} and {again} both hold case" in refused.stderr and "--plots and --compare need one" in refused.stderr
