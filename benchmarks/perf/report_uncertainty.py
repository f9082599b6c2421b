"""What intervals, pairing and the noise-aware gate add to the report, against the report without them.

Prints, from one run: the CPU model (``lscpu``) and load, then for the embedded run's results
(a ``--mb-json`` file, or by default a synthetic stand-in of its shape: 9 methods × 14 tasks with
the mini suite's item counts) the wall time of each step with per-item values and without them
(the same cases with ``items`` removed, which is what the report did before it had intervals), the
ratio and the seconds added. Steps, interleaved round by round so both see the same machine load:

* ``tables``: building the bootstrap and ``render_session``;
* ``json``: ``write_json`` with that bootstrap (the intervals' summary, the per-item pool), and the file's size;
* ``gate``: ``compare`` of the run against itself with ``normalized:2%`` (the drop tests);
* ``pairwise``: the ``--pairwise`` tables (no peer: new).

    MERGEBENCH_CACHE=~/.cache/mergebench pytest benchmarks --mb-json /tmp/run.json
    python benchmarks/perf/report_uncertainty.py /tmp/run.json [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from mergebench.results import read_json, write_json
from mergebench.results.gating import compare, parse_threshold
from mergebench.results.pairwise import pairwise_table
from mergebench.results.report import render_session
from mergebench.results.uncertainty import Bootstrap

# the mini suite: (task, domain, items, higher is better, binary)
MINI = [("arc_mini", "general", 24, True, True), ("coqa_bpb_mini", "general", 16, False, False),
        ("gsm8k_bpb_mini", "math", 6, False, False), ("harmbench_mini", "safety", 12, True, True),
        ("hellaswag_mini", "general", 10, True, True), ("humaneval_bpb_mini", "coding", 5, False, False),
        ("ifeval_mini", "instruction", 26, True, True), ("math_bpb_mini", "math", 5, False, False),
        ("mbpp_bpb_mini", "coding", 8, False, False), ("mmlu_mini", "general", 24, True, True),
        ("multilingual_bpb_mini", "multilingual", 8, False, False), ("squad_bpb_mini", "general", 6, False, False),
        ("triviaqa_bpb_mini", "general", 32, False, False), ("xstest_like_mini", "safety", 12, True, True)]
METHODS = ["soup", "task_arithmetic", "fisher", "regmean", "ties", "dare", "consensus", "localize_stitch",
           "dataless_localize_stitch"]


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def synthetic():
    """Cases of the embedded run's shape with random per-item values (timing does not depend on them)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.item_results import item_case

    rng = np.random.default_rng(0)
    results = []
    def draw(n: int, is_binary: bool) -> np.ndarray:
        return (rng.random(n) < 0.5).astype(float) if is_binary else rng.random(n) + 0.5

    for task, domain, n, higher, is_binary in MINI:
        expert, base = draw(n, is_binary), draw(n, is_binary)
        for method in METHODS:
            results.append(item_case(task, domain, draw(n, is_binary), None if domain == "general" else expert, base,
                                     method=method, model="smollm2-135m-instruct", higher=higher))
    return results


def steps(results, tmp: Path, tag: str) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each step on ``results``, as a pytest session runs them (one bootstrap for tables and JSON)."""
    seconds = {}

    def timed(step: str, work) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        seconds[step] = (time.perf_counter() - wall, time.process_time() - cpu)

    boot = None

    def tables() -> None:
        nonlocal boot
        boot = Bootstrap(results) if any(r.items is not None for r in results) else None
        render_session(results, width=160, boot=boot)

    def pairwise() -> None:
        for model in dict.fromkeys(r.model for r in results):
            Console(file=io.StringIO(), width=200).print(pairwise_table(results, model, Bootstrap(results)))

    timed("tables", tables)
    timed("json", lambda: write_json(results, tmp / f"{tag}.json", boot=boot))
    timed("gate", lambda: compare(results, results, [parse_threshold("normalized:2%")]))
    if boot is not None:
        timed("pairwise", pairwise)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", help="a --mb-json file (default: a synthetic run of the embedded shape)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = read_json(args.results) if args.results else synthetic()
    bare = [dataclasses.replace(r, items=None) for r in results]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"results: {args.results or 'synthetic, embedded shape'}: {len(results)} cases, "
          f"{len({r.method for r in results})} methods, {len({r.task for r in results})} tasks; {args.rounds} rounds")
    timings: dict[str, dict[str, list[tuple[float, float]]]] = {"with": {}, "without": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for label, cases in (("without", bare), ("with", results)):
                for step, value in steps(cases, Path(tmp), label).items():
                    timings[label].setdefault(step, []).append(value)
        sizes = {label: (Path(tmp) / f"{label}.json").stat().st_size for label in ("with", "without")}

    def median(label: str, step: str, which: int) -> float:
        return statistics.median(t[which] for t in timings[label][step])

    print(f"{'':<10} {'wall s, median (min)':^40}   {'CPU s, median':^28}")
    print(f"{'step':<10} {'without (peer)':>15} {'with':>15} {'ratio':>6}   {'without':>8} {'with':>8} {'added':>8}")
    for step in timings["with"]:
        new = [t[0] for t in timings["with"][step]]
        cpu_new = median("with", step, 1)
        if step in timings["without"]:
            old = [t[0] for t in timings["without"][step]]
            cpu_old = median("without", step, 1)
            print(f"{step:<10} {statistics.median(old):>7.3f} ({min(old):.3f}) {statistics.median(new):>7.3f} ({min(new):.3f}) "
                  f"{statistics.median(new) / statistics.median(old):>6.2f}   {cpu_old:>8.3f} {cpu_new:>8.3f} {cpu_new - cpu_old:>8.3f}")
        else:
            print(f"{step:<10} {'(new)':>15} {statistics.median(new):>7.3f} ({min(new):.3f}) {'':>6}   {'':>8} {cpu_new:>8.3f}")
    session = ("tables", "json", "gate")
    wall = sum(median("with", s, 0) - median("without", s, 0) for s in session)
    cpu = sum(median("with", s, 1) - median("without", s, 1) for s in session)
    print(f"added to a session's report (tables + json + gate): {wall:.3f} s wall, {cpu:.3f} s CPU (medians)")
    print(f"results file: {sizes['without']:,} bytes without per-item values, {sizes['with']:,} with "
          f"(+{sizes['with'] - sizes['without']:,}, {100 * (sizes['with'] / sizes['without'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
