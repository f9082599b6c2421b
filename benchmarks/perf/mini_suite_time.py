"""Time every task of a suite on one model: the per-model evaluation budget of the embedded suite.

    python benchmarks/perf/mini_suite_time.py [--model DIR] [--suite mini] [--limit N] [--role test]

Loads the model once (as the pipeline does), runs each task of the suite in turn and prints the
score, stderr, item count and seconds of each, then the total. Default model: the embedded base
(SmolLM2-135M-Instruct) from the artifact cache, built if missing.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the embedded base)")
    parser.add_argument("--suite", default="mini")
    parser.add_argument("--role", default="test", help="test, validation or all")
    parser.add_argument("--task", action="append", default=None, help="only these tasks (repeatable)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    from mergebench import plugin_manager
    from mergebench.cache import ArtifactCache
    from mergebench.evaluation.hf import HFLanguageModel
    from mergebench.pipeline import Pipeline, RunContext

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    registries = plugin_manager.registries()
    context = RunContext(cache=ArtifactCache(), batch_size=args.batch_size)
    path = args.model or Pipeline(context, registries).base(registries.models.get("smollm2-135m-instruct")).path
    started = time.perf_counter()
    lm = HFLanguageModel.from_pretrained(path, batch_size=args.batch_size)
    print(f"loaded {path} in {time.perf_counter() - started:.1f}s (torch threads: {__import__('torch').get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f})")
    specs = [s for s in registries.tasks.specs() if args.suite in s.suites and (args.role == "all" or s.role == args.role)]
    if args.task:
        specs = [s for s in specs if s.name in args.task]
    total = cpu_total = 0.0
    for spec in specs:
        task = spec.load()(spec, context, limit=args.limit)
        task.docs() if hasattr(task, "docs") else None  # data extraction is not evaluation time
        started, cpu_started = time.perf_counter(), time.process_time()
        result = task.evaluate(lm)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        total += seconds
        cpu_total += cpu
        print(f"{spec.name:28s} {result.metric:24s} {result.score:8.4f} ± {result.stderr:.4f}  n={result.n:<4d} "
              f"{seconds:6.1f}s wall {cpu:6.1f}s cpu", flush=True)
    print(f"total: {total:.1f}s wall, {cpu_total:.1f}s cpu for {len(specs)} tasks "
          f"(load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
