"""How a command ends when something goes wrong: one line on stderr and an exit status, never a traceback.

A user who mistypes an option, points at the wrong folder or hands in a broken file should read
what is wrong and what to do, not a stack of frames from argparse, json or transformers. So:

* exit 2: bad input or environment — argparse's usage errors, every :class:`MergebenchError`
  (raised by the checks that name the fix) and an ``OSError`` nothing translated (a full disk,
  a permission), printed as ``mergebench: error: ...``;
* exit 70 (``EX_SOFTWARE``): anything else is a bug in mergebench or a plugin, printed as
  ``mergebench: internal error: ...`` with the exception's type;
* exit 130: interrupted; 141: the reader of the output went away (``| head``), silently.

Every message is flattened to one line. ``MERGEBENCH_DEBUG=1`` prints the traceback first, for
whoever is fixing the bug.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, NoReturn

from mergebench.errors import MergebenchError

DEBUG_ENV = "MERGEBENCH_DEBUG"
USAGE, INTERNAL, INTERRUPTED, BROKEN_PIPE = 2, 70, 130, 141


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser with its usage errors on one line that names the help to read (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(command: Callable[[], int]) -> int:
    """``command()``'s exit status, or the status and one line for whatever it raised."""
    try:
        status = command()
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except BrokenPipeError:  # whoever read the output stopped (`mergebench plugins | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except KeyboardInterrupt:
        return _fail("interrupted", INTERRUPTED)
    except MergebenchError as exc:
        return _fail(f"error: {exc}", USAGE)
    except OSError as exc:  # the environment: a full disk, a permission, a path that went away
        return _fail(f"error: {exc}; run with {DEBUG_ENV}=1 for the traceback", USAGE)
    except Exception as exc:  # noqa: BLE001 - the last line of defence between a bug and the user's terminal
        return _fail(f"internal error: {type(exc).__name__}: {exc}. This is a bug in mergebench or a plugin: "
                     f"run again with {DEBUG_ENV}=1 for the traceback and report it", INTERNAL)


def _fail(message: str, status: int) -> int:
    if debugging():
        traceback.print_exc()
    sys.stdout.flush()
    print(f"mergebench: {one_line(message)}", file=sys.stderr)
    return status
