"""What running the grid through Ray costs on one machine: whole suites serial vs Ray, and Ray's per-task overhead.

    python benchmarks/perf/cluster_overhead.py --suite tiny --cold              # every artifact built, in fresh caches
    python benchmarks/perf/cluster_overhead.py --suite mini --cache ~/.cache/mergebench   # everything cached: overhead only
    python benchmarks/perf/cluster_overhead.py --micro-only                     # only the per-task microbenchmark

Each suite run is ``pytest benchmarks --mb-suite S`` in a subprocess, serial and then with
``--mb-executor ray --mb-ray-address local`` (a private Ray with one worker per core), rounds
interleaved; the ratio is Ray's wall time over the serial run's in the same round. The
microbenchmark times trivial Ray tasks submitted with the stages' options (one CPU, a memory
request, bounded retries), one after another (each the argument of the next: the latency a
dependent stage pays) and all at once (throughput), against calling the function inline.
Prints the CPU model (``lscpu``) and the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "unknown CPU"
    found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return f"{found.group(1).strip() if found else 'unknown CPU'}, {os.cpu_count()} cores"


def spread(values: list[float]) -> str:
    """mean ± standard error (n), or the single value marked as one run."""
    if len(values) == 1:
        return f"{values[0]:.2f} (1 run)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) / len(values) ** 0.5:.2f} (n={len(values)})"


def _noop(x: int) -> int:
    return x + 1


def micro(tasks: int, rounds: int) -> None:
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote = ray.remote(_noop).options(num_cpus=1, memory=1 << 30, max_retries=3, retry_exceptions=False)
        ray.get([remote.remote(i) for i in range(os.cpu_count() or 1)])  # start the workers first
        chain, fan, inline = [], [], []
        for _ in range(rounds):
            started = time.perf_counter()
            ref = remote.remote(0)
            for _ in range(tasks - 1):
                ref = remote.remote(ref)  # each task waits for the previous one: a dependent stage's latency
            assert ray.get(ref) == tasks
            chain.append((time.perf_counter() - started) / tasks * 1000)
            started = time.perf_counter()
            ray.get([remote.remote(i) for i in range(tasks)])
            fan.append((time.perf_counter() - started) / tasks * 1000)
            started = time.perf_counter()
            for i in range(tasks):
                _noop(i)
            inline.append((time.perf_counter() - started) / tasks * 1000)
    finally:
        ray.shutdown()
    print(f"\nRay per-task overhead, {tasks} trivial tasks with the stages' options, {rounds} rounds (ms per task):")
    print(f"  dependent chain (latency):  {spread(chain)}")
    print(f"  all at once (throughput):   {spread(fan)}")
    print(f"  inline call:                {spread(inline)}")


def run_suite(suite: str, cache: Path, ray: bool, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "pytest", str(REPO / "benchmarks"), "-p", "no:cacheprovider", "-q", "--mb-suite", suite,
               "--mb-cache-dir", str(cache), *extra]
    if ray:
        command += ["--mb-executor", "ray", "--mb-ray-address", "local"]
    env = {**os.environ, "MERGEBENCH_PROGRESS": "lines", "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    passed = re.search(r"(\d+) passed", output)
    row = {"wall": wall, "passed": int(passed.group(1)) if passed else 0, "ret": done.returncode}
    submitted = re.search(r"mergebench: (\d+) stages submitted to Ray \(.*\) ([\d.]+)s after the start", output)
    if submitted:
        row["stages"], row["startup"] = int(submitted.group(1)), float(submitted.group(2))
    summary = re.search(r"stages finished, \d+ failed, in ([\d.]+)s \(the stages' own work: ([\d.]+)s\)", output)
    if summary:
        row["cluster"], row["busy"] = float(summary.group(1)), float(summary.group(2))
    if done.returncode != 0:
        print(output[-4000:], file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default="tiny")
    parser.add_argument("--cold", action="store_true", help="fresh caches for every run (build everything)")
    parser.add_argument("--cache", default=None, help="the cache to run against (warm runs); default a fresh one per run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--micro-tasks", type=int, default=200)
    parser.add_argument("--micro-rounds", type=int, default=5)
    parser.add_argument("--micro-only", action="store_true")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments for both runs, e.g. '--mb-models tiny-llama'")
    args = parser.parse_args()

    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f} at the start")
    micro(args.micro_tasks, args.micro_rounds)
    if args.micro_only:
        return
    extra = args.pytest_args.split()
    rows: dict[str, list[dict]] = {"serial": [], "ray": []}
    for round_number in range(args.rounds):
        for mode in ("serial", "ray"):
            scratch = Path(tempfile.mkdtemp(prefix="mb-cluster-bench-"))
            cache = scratch / "cache" if args.cold or not args.cache else Path(args.cache).expanduser()
            try:
                row = run_suite(args.suite, cache, mode == "ray", extra)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            rows[mode].append(row)
            print(f"round {round_number + 1} {mode:6s}: {row['wall']:.1f}s wall, {row['passed']} passed (exit {row['ret']})"
                  + (f", {row['stages']} stages submitted {row['startup']:.1f}s after the start" if "stages" in row else "")
                  + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    serial = [r["wall"] for r in rows["serial"]]
    ray = [r["wall"] for r in rows["ray"]]
    ratios = [r / s for r, s in zip(ray, serial)]
    stages = rows["ray"][0].get("stages", 0)
    workers = os.cpu_count() or 1
    added = [(r["wall"] - s["wall"]) / stages for r, s in zip(rows["ray"], rows["serial"])] if stages else []
    worker_seconds = [(r["wall"] * workers - s["wall"]) / stages for r, s in zip(rows["ray"], rows["serial"])] if stages else []
    print(f"\n--mb-suite {args.suite} ({'cold: every artifact built' if args.cold or not args.cache else 'warm cache'}), "
          f"{rows['serial'][0]['passed']} cases, {stages} stages on {workers} Ray workers:")
    print(f"  serial wall s:                     {spread(serial)}")
    print(f"  Ray wall s:                        {spread(ray)}")
    print(f"  Ray / serial:                      {spread(ratios)}")
    if stages:
        print(f"  Ray start-up (connect, probe, plan) s: {spread([r['startup'] for r in rows['ray']])}")
        print(f"  wall added per stage s:            {spread(added)}")
        print(f"  worker-seconds added per stage s:  {spread(worker_seconds)}  ((Ray wall x {workers} workers - serial wall) / stages)")
        idle = [((r["cluster"] - r["startup"]) * workers - r["busy"]) / stages for r in rows["ray"] if "busy" in r]
        if idle:
            print(f"  stages' own work in workers s:     {spread([r['busy'] for r in rows['ray'] if 'busy' in r])}")
            print(f"  idle worker-seconds per stage s:   {spread(idle)}  ((cluster time after start-up x {workers} - "
                  "stages' work) / stages: dispatch, waiting for inputs, the driver)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
