"""``mergebench report``: the tables of saved results, their figures, and the gate against a baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mergebench.cli import inputs
from mergebench.cli.common import console
from mergebench.errors import UsageError


def cmd_report(args: argparse.Namespace) -> int:
    from mergebench.results.gating import parse_thresholds
    from mergebench.results.report import comparison_table, regression_lines, render_session

    if args.fail and not args.compare:
        raise UsageError("--fail needs --compare BASELINE.json")
    try:
        thresholds = parse_thresholds(args.fail)
    except UsageError as exc:  # its message names pytest's option
        raise UsageError(str(exc).replace("--mb-compare-fail", "--fail")) from None
    results = [r for path in args.results for r in inputs.results_file(path, "results file")]
    baseline = inputs.results_file(args.compare, "--compare baseline") if args.compare else None
    if args.plots:
        inputs.writable_folder(Path(args.results[0]).parent, "--plots writes its figures next to the first results file")
    out = console()
    sys.stdout.write(render_session(results, width=out.width, color=out.is_terminal))
    if args.plots:
        from mergebench.results.plots import write_plots

        for path in write_plots(results, Path(args.results[0]).with_suffix("")):
            out.print(f"written: {path}")
    if baseline is not None:
        from mergebench.results.gating import compare

        deltas = compare(baseline, results, thresholds)
        out.print(comparison_table(deltas, Path(args.compare).name))
        for line in regression_lines(deltas):
            out.print(line, style="bold red")
        if any(d.failed_by for d in deltas):
            return 1
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="print the tables of results files, plot them, compare with a baseline")
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--plots", action="store_true", help="write PNG figures next to the first results file")
    p.add_argument("--compare", metavar="BASELINE.json", help="show changes against a baseline results file")
    p.add_argument("--fail", action="append", default=[], metavar="KIND[:NAME]:AMOUNT",
                   help="exit 1 when a value regresses past AMOUNT (as pytest's --mb-compare-fail)")
    p.set_defaults(func=cmd_report)
