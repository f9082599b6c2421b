"""``mergebench report``: the tables of saved results, their figures, and the gate against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergebench.cli.common import console
from mergebench.errors import UsageError


def cmd_report(args: argparse.Namespace) -> int:
    from mergebench.results import read_json
    from mergebench.results.report import comparison_table, regression_lines, render_session

    results = [r for path in args.results for r in read_json(path)]
    out = console()
    sys.stdout.write(render_session(results, width=out.width, color=out.is_terminal))
    if args.plots:
        from mergebench.results.plots import write_plots

        for path in write_plots(results, Path(args.results[0]).with_suffix("")):
            out.print(f"written: {path}")
    if args.compare:
        from mergebench.results.gating import compare, parse_thresholds

        deltas = compare(read_json(args.compare), results, parse_thresholds(args.fail))
        out.print(comparison_table(deltas, Path(args.compare).name))
        for line in regression_lines(deltas):
            out.print(line, style="bold red")
        if any(d.failed_by for d in deltas):
            return 1
    elif args.fail:
        raise UsageError("--fail needs --compare BASELINE.json")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="print the tables of results files, plot them, compare with a baseline")
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--plots", action="store_true", help="write PNG figures next to the first results file")
    p.add_argument("--compare", metavar="BASELINE.json", help="show changes against a baseline results file")
    p.add_argument("--fail", action="append", default=[], metavar="KIND[:NAME]:AMOUNT",
                   help="exit 1 when a value regresses past AMOUNT (as pytest's --mb-compare-fail)")
    p.set_defaults(func=cmd_report)
