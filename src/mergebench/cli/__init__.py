"""``mergebench`` on the command line: the same code paths as the pytest cases.

    mergebench plugins
    mergebench merge --method ties --base DIR --expert math=DIR --expert coding=DIR --param density=0.2 --out DIR
    mergebench merge --method fisher --base DIR --expert math=DIR --samples math=MATH.jsonl ... --out DIR
    mergebench eval --model DIR --task gsm8k_mini
    mergebench finetune --base smollm2-135m-instruct --domain math
    mergebench report results.json
    mergebench cache verify [--stage S]
    mergebench cache gc [--older-than DAYS] [--stage S] [--yes]

A failing command prints one line and exits 2 (bad input) or 70 (a bug); see :mod:`mergebench.cli.failures`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from mergebench.cli import cache, evaluate, failures, finetune, merge, plugins, report

COMMANDS = (plugins, merge, evaluate, finetune, report, cache)
"""One module per command; each adds its own subparser (options next to the code that reads them)."""


def build_parser() -> argparse.ArgumentParser:
    parser = failures.OneLineParser(prog="mergebench", description="Benchmark ways of merging finetuned LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    sub.metavar = "{" + ",".join(sub.choices) + "}"  # named in "required" errors instead of the dest
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return failures.run(lambda: args.func(args))
