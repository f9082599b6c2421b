"""A worked plan for the study's full grid on N GPUs: tasks per kind, GPU-hours, critical path, wall time.

    python benchmarks/perf/cluster_plan.py                     # 8 and 64 GPUs, released experts and finetuned ones
    python benchmarks/perf/cluster_plan.py --gpus 16 --ray-overhead-s 0.05

Task counts come from the real stage graph of ``--mb-suite full`` (the same graph ``--mb-executor``
submits). Costs per task: finetuning GPU-hours are the study's Table 6 (measured by the authors on
RTX A6000s for 2B/3B and A100s for 8B/9B); grid sizes are the study's Table 7 (our registry's
grids, which the graph does not need, are printed beside them). The study gives no figures in its
text for a merge, a validation point or one benchmark's evaluation (Figure 4's bars are for one
3B merge and carry no numbers we can read), so those are ASSUMPTIONS, named and set below; change
them with the options and the plan follows. The wall time of a DAG of tasks on N identical GPUs
under any greedy scheduler (Ray's included) lies between max(critical path, work / N) and
work / N + critical path (Graham's bound for list scheduling).
"""

from __future__ import annotations

import argparse
from collections import Counter

# The study's Table 6: finetuning GPU-hours per expert, by base size and domain.
TRAIN_GPU_HOURS = {
    "small": {"instruction": 10, "math": 40, "multilingual": 5, "coding": 18, "safety": 24},  # 2B/3B
    "large": {"instruction": 36, "math": 154, "multilingual": 17, "coding": 66, "safety": 82},  # 8B/9B
}
# The study's Table 7: validation grid points per method.
STUDY_GRID = {"soup": 0, "task_arithmetic": 10, "fisher": 0, "regmean": 5, "ties": 30, "dare": 30, "consensus": 35,
              "localize_stitch": 0, "dataless_localize_stitch": 5}
# ASSUMPTIONS (GPU-hours unless said otherwise), per base size small (2B/3B) / large (8B/9B):
ASSUMED = {
    "fetch_h": (0.1, 0.2),          # download a released checkpoint (no GPU): 5-18 GB at ~100 MB/s plus verification
    "statistics_h": (0.25, 0.5),    # Fisher / RegMean / L&S on 1,000 samples of each of 5 experts (forward, and backward)
    "merge_h": (0.1, 0.35),         # CPU-hours: our streaming merge took 6-19 s for 135M x 5 experts; x22 and x67 params
    "point_h": (0.1, 0.25),         # one validation point: merge in memory + the five surrogates
    "eval_h": (0.25, 0.5),          # one benchmark on one model with vLLM, mean over the 28 tasks
    "longest_eval_h": (1.5, 3.0),   # the longest one: MATH, 5,000 chain-of-thought generations
}


def size_class(model) -> int:
    from mergebench.cluster.resources import parameter_count

    return 0 if parameter_count(model.size) < 5e9 else 1


def plan(gpus: list[int], ray_overhead_s: float, finetune: bool, search: str) -> None:
    from mergebench import plugin_manager
    from mergebench.cluster.graph import build_graph
    from mergebench.selection import select_cases

    registries = plugin_manager.registries()
    cases = select_cases(registries, suites=["full"])
    graph = build_graph(cases, registries, search=search,
                        computes_statistics={"fisher", "regmean", "localize_stitch"}.__contains__)
    counts = graph.counts()
    models = {c.model: registries.models.get(c.model) for c in cases}
    work: Counter = Counter()  # GPU-hours by kind
    cpu: Counter = Counter()  # hours on CPU-only workers
    paths = {}
    for name, model in models.items():
        k = size_class(model)
        train = {d: (TRAIN_GPU_HOURS["small" if k == 0 else "large"][d] if finetune else 0.0) for d in model.domains}
        fetch = ASSUMED["fetch_h"][k]
        work["train"] += sum(train.values())
        cpu["fetch"] += fetch * (1 + (0 if finetune else len(model.domains)))
        stats = [s for s in graph.stages.values() if s.model == name and s.kind == "statistics"]
        work["statistics"] += len(stats) * ASSUMED["statistics_h"][k]
        searches = [s for s in graph.stages.values() if s.model == name and s.kind == "search"]
        points = {s.method: STUDY_GRID.get(s.method, 0) for s in searches}
        work["search"] += sum(points.values()) * ASSUMED["point_h"][k]
        merges = [s for s in graph.stages.values() if s.model == name and s.kind == "merge"]
        cpu["merge"] += len(merges) * ASSUMED["merge_h"][k]
        evals = [s for s in graph.stages.values() if s.model == name and s.kind == "evaluate"]
        work["evaluate"] += len(evals) * ASSUMED["eval_h"][k]
        longest_search = max(points.values(), default=0) * ASSUMED["point_h"][k]
        path = {"fetch base": fetch, "longest expert": max(train.values()) if finetune else fetch,
                "statistics or search": max(ASSUMED["statistics_h"][k] if stats else 0.0, longest_search),
                "merge (CPU)": ASSUMED["merge_h"][k], "longest evaluation": ASSUMED["longest_eval_h"][k]}
        paths[name] = path
    critical_model, critical = max(paths.items(), key=lambda item: sum(item[1].values()))
    total = sum(work.values())
    overhead_h = len(graph.stages) * ray_overhead_s / 3600
    print(f"the full grid ({'finetuning the experts (study recipes)' if finetune else 'released experts from the hub'}, "
          f"--mb-search {search}): {len(cases)} cases, {len(graph.stages)} tasks: "
          + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
    print("  GPU-hours by kind: " + ", ".join(f"{kind} {h:,.0f}" for kind, h in work.items() if h) + f"; total {total:,.0f}")
    print("  CPU-hours (no GPU): " + ", ".join(f"{kind} {h:,.0f}" for kind, h in cpu.items()))
    print(f"  critical path ({critical_model}): " + " + ".join(f"{what} {h:g}" for what, h in critical.items())
          + f" = {sum(critical.values()):.1f} h")
    print(f"  Ray's own overhead: {len(graph.stages)} tasks x {ray_overhead_s:g} s = {overhead_h * 60:.1f} task-minutes")
    for n in gpus:
        low, high = max(sum(critical.values()), total / n), total / n + sum(critical.values())
        bound = "work / N" if total / n >= sum(critical.values()) else "the critical path"
        print(f"  on {n} GPUs: {low:,.0f}-{high:,.0f} h wall ({low / 24:.1f}-{high / 24:.1f} days); {bound} decides")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, action="append", default=None)
    parser.add_argument("--ray-overhead-s", type=float, default=0.5, help="measured per-task overhead (benchmarks/perf/cluster_overhead.py)")
    for key, (small, large) in ASSUMED.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, nargs=2, default=None, metavar=("SMALL", "LARGE"),
                            help=f"assumed hours for 2B/3B and 8B/9B bases (default {small} {large})")
    args = parser.parse_args()
    for key in ASSUMED:
        given = getattr(args, key)
        if given:
            ASSUMED[key] = tuple(given)
    print("assumptions (hours, 2B/3B / 8B/9B): " + ", ".join(f"{k} {s:g}/{large:g}" for k, (s, large) in ASSUMED.items()))
    for finetune in (False, True):
        for search in ("none", "grid"):
            plan(args.gpus or [8, 64], args.ray_overhead_s, finetune, search)


if __name__ == "__main__":
    main()
