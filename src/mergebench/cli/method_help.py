"""``mergebench merge --help`` ends with the installed methods: name, summary, hyperparameters with defaults and docs.

Built only when help is asked for (loading every plugin on each ``mergebench`` call would slow every
command) and from :func:`~mergebench.plugin_survey.survey`, so a plugin that fails to import costs its
own methods, not the help: the rest are listed and the failure is named.
"""

from __future__ import annotations

import argparse
import shutil

from mergebench.cli.plugin_text import INDENT, value, wrap


def methods_epilog() -> str:
    from mergebench.plugin_survey import survey

    found = survey()
    cols = max(40, shutil.get_terminal_size().columns - 2)  # argparse's own width
    lines = wrap("methods (--method NAME; --param KEY=VALUE, defaults shown; `mergebench plugins NAME` shows a "
                 "method's grids, ranges and sources):", indent="", cols=cols)
    for spec in found.registries.methods.specs():
        lines += wrap(f"{spec.name}: {spec.summary}" if spec.summary else spec.name, indent="  ", hanging="    ", cols=cols)
        for hp in spec.hyperparams:
            text = f"{hp.name}={value(hp.default)}" + (f"  {hp.doc}" if hp.doc else "")
            lines += wrap(text, indent=INDENT + "  ", hanging="    ", cols=cols)
    if not len(found.registries.methods):
        lines.append("  (none loaded)")
    for problem in found.problems:
        lines += wrap(f"not listed: {problem}", indent="", hanging="  ", cols=cols)
    return "\n".join(lines)


class HelpWithMethods(argparse.Action):
    """``-h/--help`` that appends :func:`methods_epilog` at the moment help is printed."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show this help message, with the installed merge methods, and exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.epilog = methods_epilog()
        parser.print_help()
        parser.exit()
