"""Run ``mergebench`` command lines as a user types them, without paying torch's import for each one.

A table of bad inputs is dozens of commands; started with ``python -m mergebench.cli`` each costs
one to two seconds of CPU importing torch before it fails in milliseconds. A :class:`ForkServer`
is one interpreter that imports mergebench and torch once (and runs nothing, so a fork is clean),
then forks a child per command. The child gets its own working folder, environment
(``PYTHONPATH`` entries go on ``sys.path`` too, as at start-up) and stdout/stderr files, runs the
same ``main`` as ``python -m mergebench.cli``, and exits with the status the interpreter would
give: main's, argparse's, or 1 after printing the traceback of an exception that escaped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Mapping, Sequence

PRELOAD = ("torch", "safetensors.torch", "mergebench.cli", "mergebench.cli.inputs", "mergebench.cli.out_dir",
           "mergebench.checkpoint.reader", "mergebench.merging.engine", "mergebench.results.report", "mergebench.results.gating",
           "mergebench.plugin_manager")
REPO = Path(__file__).resolve().parents[1]


class ForkServer:
    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-m", "tests.cli_runner"], cwd=REPO, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess:
        """``mergebench *argv`` in ``cwd`` with exactly ``env``; stdout and stderr as text."""
        with tempfile.TemporaryDirectory() as scratch:
            out, err = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
            request = {"argv": list(argv), "cwd": str(cwd), "env": dict(env), "out": out, "err": err}
            self._process.stdin.write(json.dumps(request) + "\n")
            reply = self._process.stdout.readline()
            if not reply:
                raise RuntimeError("the mergebench fork server died")
            return subprocess.CompletedProcess(["mergebench", *argv], json.loads(reply)["status"],
                                               Path(out).read_text(), Path(err).read_text())

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(timeout=60)


def _serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _command(**request)
        _, wait_status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(wait_status)}), flush=True)


def _command(argv: Sequence[str], cwd: str, env: Mapping[str, str], out: str, err: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    try:
        from mergebench.cli import main

        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # what the interpreter does with an exception that reaches the top
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _serve()
