"""``mergebench report``: the tables of saved results, their figures, pairwise comparisons, and the gate against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergebench.cli import inputs
from mergebench.cli.common import console
from mergebench.errors import UsageError


def cmd_report(args: argparse.Namespace) -> int:
    from mergebench.results.gating import check_alpha, parse_thresholds
    from mergebench.results.report import render_session
    from mergebench.results.uncertainty import Bootstrap

    check_alpha(args.alpha, "--alpha")
    if args.html:
        from mergebench.results.html import check_page_dir

        check_page_dir(args.html, "--html")
    if args.fail and not args.compare:
        raise UsageError("--fail needs --compare BASELINE.json")
    if args.resamples < 100:
        raise UsageError(f"--resamples {args.resamples}: a bootstrap needs at least 100 (default 2000)")
    try:
        thresholds = parse_thresholds(args.fail)
    except UsageError as exc:  # its message names pytest's option
        raise UsageError(str(exc).replace("--mb-compare-fail", "--fail")) from None
    from mergebench.results import read_json, read_results

    files = [(path, *read_results(path, "results file")) for path in args.results]
    runs = _runs(files)
    if len(runs) > 1 and (args.plots or args.compare):
        first, second, case = _shared_case(runs)
        raise UsageError(f"{first} and {second} both hold case {case}, so they are two runs: --plots and --compare "
                         "need one; give one results file, or files that split one grid")
    results = [r for _, run in runs for r in run]
    baseline = read_json(args.compare, "--compare baseline") if args.compare else None
    if args.plots:
        inputs.writable_folder(Path(args.results[0]).parent, "--plots writes its figures next to the first results file")
    out = console()
    boots = {}
    for path, run in runs:
        if len(runs) > 1:  # files holding the same cases are separate runs: tables of their own
            out.print(f"[bold]{path}[/]")
        boot = boots[path] = Bootstrap(run, seed=args.seed, resamples=args.resamples)
        sys.stdout.write(render_session(run, width=out.width, color=out.is_terminal, boot=boot))
        if args.pairwise:
            _pairwise(run, boot, out)
    if args.plots:
        from mergebench.results.plots import write_plots

        for path in write_plots(results, Path(args.results[0]).with_suffix(""), boot=boot):
            out.print(f"written: {path}")
    if args.html:
        _html(args, files, boots, out)
    if baseline is not None:
        return _gate(args, results, baseline, thresholds, out)
    return 0


def _runs(files: list[tuple[str, list, dict]]) -> list[tuple[str, list]]:
    """The results files (path, cases, meta) as runs: files that split one grid (shards, machines)
    are one run, combined; files that hold the same case are separate runs, each reported on its
    own (one table cell never holds two runs' numbers)."""
    seen: set = set()
    for _, results, _ in files:
        keys = {(r.case_id, getattr(r, "semantics", None)) for r in results}
        if keys & seen:
            return [(path, results) for path, results, _ in files]
        seen |= keys
    return [(", ".join(path for path, _, _ in files), [r for _, results, _ in files for r in results])]


def _shared_case(runs: list[tuple[str, list]]) -> tuple[str, str, str]:
    """Two files and a case they both hold (``runs`` are separate only when there is one)."""
    seen: dict[str, str] = {}
    for path, run in runs:
        for r in run:
            if r.case_id in seen and seen[r.case_id] != path:
                return seen[r.case_id], path, r.case_id
            seen.setdefault(r.case_id, path)
    return runs[0][0], runs[1][0], "?"


def _html(args: argparse.Namespace, files, boots, out) -> None:
    """The page of the files read for the tables; a file reported on its own reuses its tables' draws."""
    from mergebench.results.html import write_page
    from mergebench.results.html_meta import runs_of

    runs = runs_of(files, boots=boots, seed=args.seed, resamples=args.resamples)
    out.print(f"written: {write_page(runs, args.html)}")


def _pairwise(results, boot, out) -> None:
    from mergebench.results.pairwise import pairwise_note, pairwise_table

    if not any(r.items is not None for r in results):
        out.print("--pairwise: these results carry no per-item values (written before mergebench kept them); "
                  "re-run the benchmark to compare methods paired", style="yellow")
        return
    for model in dict.fromkeys(r.model for r in results):
        table = pairwise_table(results, model, boot)
        if table is not None:
            out.print(table)
    out.print(pairwise_note(boot), style="dim")


def _gate(args: argparse.Namespace, results, baseline, thresholds, out) -> int:
    from mergebench.results.comparison_report import comparison_table, gate_lines, render
    from mergebench.results.gating import compare

    deltas = compare(baseline, results, thresholds, alpha=args.alpha, test=args.test,
                     seed=args.seed, resamples=args.resamples)
    sys.stdout.write(render(comparison_table(deltas, Path(args.compare).name, alpha=args.alpha, test=args.test),
                            out.width, out.is_terminal))
    for style, line in gate_lines(deltas, alpha=args.alpha, test=args.test):
        out.print(line, style=style or None, highlight=False)
    if args.fail and not deltas:
        out.print(f"the gate compared nothing: {args.compare} shares no (model, method) with the results "
                  "(another suite or selection?)", style="bold red")
        return 1
    return 1 if any(d.failed_by for d in deltas) else 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="print the tables of results files, plot them, compare with a baseline")
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--plots", action="store_true", help="write PNG figures next to the first results file")
    p.add_argument("--pairwise", action="store_true",
                   help="compare every pair of methods paired on the same items: overall difference with its "
                        "interval and each domain's winner")
    p.add_argument("--html", metavar="DIR",
                   help="write DIR/index.html: one self-contained page (leaderboard, tables, runtimes, figures, "
                        "metadata) to share; several results files become one section each, side by side")
    p.add_argument("--compare", metavar="BASELINE.json", help="show changes against a baseline results file")
    p.add_argument("--fail", action="append", default=[], metavar="KIND[:NAME]:AMOUNT",
                   help="exit 1 when a value regresses past AMOUNT (as pytest's --mb-compare-fail)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="level of the gate's one-sided test: a drop fails only if the test rejects 'no drop' (default 0.05)")
    p.add_argument("--test", choices=("bootstrap", "point"), default="bootstrap",
                   help="bootstrap: fail on drops past the threshold that the test calls real (default); "
                        "point: fail on point estimates alone")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.set_defaults(func=cmd_report)
