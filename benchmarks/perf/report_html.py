"""What the results page costs, against the terminal report of the same results with its figures (the peer).

Prints the CPU model (``lscpu``) and load, then for a ``--mb-json`` file, interleaved round by round
so both see the same machine load, the wall and CPU seconds of

* ``report --plots`` (the peer): a fresh bootstrap, ``render_session`` and ``write_plots``;
* ``report --html``: a fresh bootstrap and ``write_page`` (every table, the figures inlined, the metadata);

their ratio (median over rounds, with the spread of the rounds), and the page's size against the
results file's.

    MERGEBENCH_CACHE=~/.cache/mergebench pytest benchmarks --mb-json /tmp/run.json
    python benchmarks/perf/report_html.py /tmp/run.json [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from report_uncertainty import cpu_model

from mergebench.results.html import write_page
from mergebench.results.html_meta import read_runs
from mergebench.results.plots import write_plots
from mergebench.results.report import render_session
from mergebench.results.uncertainty import Bootstrap


def peer(path: Path, out: Path) -> None:
    (run,) = read_runs([path])
    boot = Bootstrap(run.results)
    render_session(run.results, width=200, boot=boot)
    write_plots(run.results, out / "figure", boot=boot)


def page(path: Path, out: Path) -> Path:
    return write_page(read_runs([path]), out / "page")


def timed(step, *args) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    step(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average at start {os.getloadavg()[0]:.1f}")
    times: dict[str, list[tuple[float, float]]] = {"report --plots (peer)": [], "report --html": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        page(args.results, out)  # warm imports (matplotlib) for both
        for _ in range(args.rounds):
            times["report --plots (peer)"].append(timed(peer, args.results, out))
            times["report --html"].append(timed(page, args.results, out))
        size = (out / "page" / "index.html").stat().st_size
    for name, rounds in times.items():
        walls = [w for w, _ in rounds]
        print(f"{name:24s} wall {statistics.median(walls):6.2f} s (rounds {min(walls):.2f}–{max(walls):.2f}), "
              f"CPU {statistics.median(c for _, c in rounds):6.2f} s")
    ratios = [h[0] / p[0] for p, h in zip(times["report --plots (peer)"], times["report --html"])]
    print(f"page / peer wall, per round: median {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}–{max(ratios):.2f}x)")
    print(f"page {size / 1024:.0f} KiB; results file {args.results.stat().st_size / 1024:.0f} KiB; "
          f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
