"""What the first-contact help costs, each command against a peer without it, interleaved in one run.

    python benchmarks/perf/first_contact_cost.py [--rounds 5]

* ``pytest benchmarks -k "ties and gemma" --collect-only -q``: with the selection hint (it selects the
  cases of every other suite and judges them against the filter) vs. the same with the hint's plugin
  blocked (``-p no:mergebench.pytest_selection_hint``);
* ``mergebench merge --help``: with the method list built from the registries vs. ``mergebench eval
  --help`` (the same parser, no plugins loaded);
* ``mergebench plugins``: the block listing a pipe gets vs. ``--format table`` (the tables, what a pipe
  got before).

Each command runs as a fresh process, as a user runs it. Prints the CPU model (``lscpu``), the median
and range of each command's wall time over the rounds, and the ratio of medians. Not a test: timings
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MB = [sys.executable, "-m", "mergebench.cli"]
PYTEST = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-k", "ties and gemma", "--collect-only", "-q"]
PAIRS = [
    ("pytest -k, hint", [*PYTEST], "pytest -k, no hint", [*PYTEST, "-p", "no:mergebench.pytest_selection_hint"]),
    ("merge --help", [*MB, "merge", "--help"], "eval --help", [*MB, "eval", "--help"]),
    ("plugins (blocks)", [*MB, "plugins"], "plugins --format table", [*MB, "plugins", "--format", "table"]),
]


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 5):  # 5: pytest collected nothing, which is the point here
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "COLUMNS": "80", "MERGEBENCH_CACHE": tempfile.mkdtemp(prefix="mb-first-contact-")}
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds")
    for label, command, peer_label, peer in PAIRS:
        ours, theirs = [], []
        timed(command, env), timed(peer, env)  # warm the page cache and bytecode for both
        for round_ in range(args.rounds):
            first, second = ((command, ours), (peer, theirs)) if round_ % 2 == 0 else ((peer, theirs), (command, ours))
            for cmd, times in (first, second):
                times.append(timed(cmd, env))
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        print(f"{label:<18} median {m_ours:.2f}s (range {min(ours):.2f}-{max(ours):.2f})   "
              f"{peer_label:<22} median {m_theirs:.2f}s (range {min(theirs):.2f}-{max(theirs):.2f})   "
              f"ratio {m_ours / m_theirs:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
