"""What the hyperparameter validation search costs, for TIES on the embedded model.

Prints, from one run on the same inputs: the time of one evaluation (merge one grid point in
memory and score every validation surrogate once), of the full 30-point grid search and of
successive halving, each as a multiple of one evaluation, and whether both searches pick the
same point. Each measurement starts from a fresh objective (inputs read, model loaded), so the
one-time costs are in every figure; the input files are read once before any timing, so all
three read them from the page cache.

    MERGEBENCH_CACHE=... python benchmarks/perf/search_speed.py [--model smollm2-135m-instruct] [--method ties]

The model's experts and their surrogate scores come from the artifact cache (built first if
missing, which takes a while on a CPU).
"""

from __future__ import annotations

import argparse
import time

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.merging.api import MergeContext
from mergebench.pipeline import Pipeline, RunContext
from mergebench.search.objective import UNITS, MergeObjective, Surrogate
from mergebench.search.strategies import GridSearch, SuccessiveHalving, grid_points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="ties")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-shared-decoding", action="store_true",
                        help="score grid points one at a time (the search before shared decoding)")
    args = parser.parse_args()

    registries = plugin_manager.registries()
    pipeline = Pipeline(RunContext(cache=ArtifactCache(args.cache_dir), device="cpu"), registries)
    model, method = registries.models.get(args.model), registries.methods.get(args.method)
    base = pipeline.base(model)
    experts = pipeline.experts(model, base)
    tasks = pipeline.surrogates(model)
    references = {t.name: pipeline.evaluate(experts[t.domain], t) for t in tasks}
    surrogates = [Surrogate(t, references[t.name].n, references[t.name].score) for t in tasks]
    context = MergeContext(device="cpu", exclude=pipeline.context.exclude, domains=tuple(experts))
    points = grid_points(method)

    def objective(share_decoding: bool = True) -> MergeObjective:
        from mergebench.evaluation.hf import HFLanguageModel

        return MergeObjective(method, base.path, {d: r.path for d, r in experts.items()}, context, surrogates,
                              make_task=lambda spec, limit: spec.load()(spec, pipeline.context, limit=limit),
                              load_model=lambda: HFLanguageModel.from_pretrained(base.path, batch_size=16, device="cpu"),
                              share_decoding=share_decoding)

    # read every input file once first: otherwise whichever measurement runs first pays the disk
    # (after a cold run had evicted the page cache, "one evaluation" took 43 s instead of 29)
    for directory in [base.path, *(r.path for r in experts.values())]:
        for file in sorted(directory.glob("*.safetensors")):
            with open(file, "rb") as handle:
                while handle.read(1 << 24):
                    pass

    started = time.perf_counter()
    objective(False).scores([method.resolve_params({})], 0, UNITS)
    one = time.perf_counter() - started
    share = not args.no_shared_decoding
    grid_objective = objective(share)
    grid = GridSearch().run(points, grid_objective)
    halving = SuccessiveHalving().run(points, objective(share))

    print(f"{model.name}, {method.name}: {len(points)} grid points, {len(experts)} experts, "
          f"{'shared' if share else 'one-at-a-time'} decoding, "
          f"surrogates {', '.join(f'{s.spec.name} ({s.items})' for s in surrogates)}")
    print(f"{'':24}{'seconds':>10}{'x one evaluation':>20}{'item-evaluations':>20}")
    print(f"{'one evaluation':24}{one:10.1f}{1.0:20.2f}{UNITS:20d}")
    for result in (grid, halving):
        print(f"{result.strategy + ' search':24}{result.seconds:10.1f}{result.seconds / one:20.2f}{result.item_evaluations:20d}")
    same = grid.best == halving.best
    print(f"grid picks {grid.best}; halving picks {halving.best}: {'the same point' if same else 'DIFFERENT points'}")
    full = {params_key(t.params): t.objective for t in grid.trials}
    picked = full[params_key(halving.best)]
    print(f"on all validation items: grid's pick {max(full.values()):.4f}, halving's pick {picked:.4f} "
          f"(rank {rank_of(halving.best, full)} of {len(full)})")
    # how finely halving's prefixes can rank: distinct objective values of all points on each prefix
    replay = Replay(grid.trials, grid_objective)
    distinct = []
    for _points, units in SuccessiveHalving().schedule(len(points), UNITS):
        values = {round(replay.combine(scores), 9) for scores in replay.scores(points, 0, units)}
        distinct.append(f"{len(values)} on {units}/{UNITS}")
    print(f"distinct objective values of the {len(points)} points on halving's prefixes: {', '.join(distinct)} "
          f"(tied points keep grid order)")
    ranks = replay_ranks(replay, points, full)
    print(f"halving replayed on the grid's per-item scores in {len(ranks)} random point orders (random tie "
          f"breaks) picks rank {min(ranks)} to {max(ranks)} of {len(points)}, median {sorted(ranks)[len(ranks) // 2]}")


def params_key(params) -> str:
    return repr(sorted(params.items()))


def rank_of(params, full: dict[str, float]) -> int:
    """Rank of ``params`` on all validation items (``full``: objective by params key), 1 = best."""
    value = full[params_key(params)]
    return 1 + sum(other > value for other in full.values())


class Replay:
    """An objective answering from the grid's stored per-item scores: halving replayed without a model.

    Item ranges and the objective are ``objective``'s (the one the grid ran on)."""

    n_items = UNITS

    def __init__(self, trials, objective: MergeObjective) -> None:
        self.stored = {params_key(t.params): t.scores for t in trials}
        self.objective = objective

    def scores(self, points, start, stop):
        return [{s.spec.name: self.stored[params_key(p)].get(s.spec.name, [])[slice(*self.objective.span(s, start, stop))]
                 for s in self.objective.surrogates} for p in points]

    def combine(self, scores):
        return self.objective.combine(scores)


def replay_ranks(replay: Replay, points, full: dict[str, float], orders: int = 200, seed: int = 0) -> list[int]:
    """Rank on all items (``full``: objective by params key) of halving's pick, in shuffled point orders."""
    import random

    rng, ranks = random.Random(seed), []
    for _ in range(orders):
        order = [dict(p) for p in points]
        rng.shuffle(order)
        ranks.append(rank_of(SuccessiveHalving().run(order, replay).best, full))
    return ranks


if __name__ == "__main__":
    main()
