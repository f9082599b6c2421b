"""How good successive halving's picks are, replayed on the stored full grids of several methods.

``search_speed.py`` times one method's search; this asks whether a schedule picks well, and on
more than one grid, without a model: each grid's per-item scores (stored by a full grid run) answer
for every point halving would score. Per grid it prints the grid's best, median and the expected
regret of a random pick, then per schedule the pick, its rank and regret on all validation items,
the rank range over shuffled point orders and the item-units scored (the full grid scores
``points × 54``).

    # once per method: run its full grid and store the per-item scores (minutes per method on a CPU)
    python benchmarks/perf/search_speed.py --method dare --grid-scores grids/dare.json
    python benchmarks/perf/search_replay.py --grid ties=grids/ties.json --grid dare=grids/dare.json

The experts and their surrogate scores come from the artifact cache, as for ``search_speed.py``;
a stored file made from other experts is refused (its key names them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_speed import Replay, SearchSetup, params_key, rank_of, replay_ranks, stored_grid  # noqa: E402

from mergebench.search.objective import UNITS  # noqa: E402
from mergebench.search.strategies import SuccessiveHalving  # noqa: E402

SCHEDULES = {
    "default": SuccessiveHalving(),
    "first round on 2 units (1/27)": SuccessiveHalving(min_items=2),
    "every round (max_rounds none)": SuccessiveHalving(max_rounds=None),
    "3 finalists": SuccessiveHalving(finalists=3),
    "every round, eta's finalists": SuccessiveHalving(max_rounds=None, finalists=None),
}
"""The schedules compared: the default, the first round on 1/27 of the items (the default until 2026-12-03's
evening), and the three-round searches before that."""


def grid_arg(text: str) -> tuple[str, Path]:
    method, sep, path = text.partition("=")
    if not sep or not method or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected METHOD=FILE, e.g. ties=grids/ties.json")
    return method, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=grid_arg, action="append", required=True, metavar="METHOD=FILE",
                        help="a method and its stored grid (search_speed.py --method METHOD --grid-scores FILE)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--orders", type=int, default=50, help="shuffled point orders per schedule")
    args = parser.parse_args()

    for method_name, path in args.grid:
        setup = SearchSetup(args.model, method_name, args.cache_dir)
        stored = stored_grid(path, setup)
        if stored is None:
            raise SystemExit(f"{path}: no stored grid of {method_name} for these experts; store one with "
                             f"`python benchmarks/perf/search_speed.py --method {method_name} --grid-scores {path}`")
        grid, when = stored
        replay = Replay(grid.trials, setup.objective())
        full = {params_key(t.params): t.objective for t in grid.trials}
        values = sorted(full.values(), reverse=True)
        best, points = values[0], setup.points
        print(f"\n{setup.method.name}: {len(points)} points, full grid stored {when}; on all validation items best "
              f"{best:.4f}, median {statistics.median(values):.4f}, worst {values[-1]:.4f}; a random pick: expected "
              f"rank {(len(values) + 1) / 2:.1f}, regret {best - statistics.mean(values):.4f}")
        print(f"  {'schedule':32}{'rounds (points, units)':34}{'units':>7}{'rank':>6}{'regret':>9}  "
              f"{'ranks in ' + str(args.orders) + ' point orders':>24}  pick")
        for label, strategy in SCHEDULES.items():
            result = strategy.run(points, replay)
            ranks = replay_ranks(replay, points, full, orders=args.orders, halving=strategy)
            print(f"  {label:32}{str(strategy.schedule(len(points), UNITS)):34}{result.item_evaluations:7d}"
                  f"{rank_of(result.best, full):6d}{best - full[params_key(result.best)]:9.4f}  "
                  f"{f'{min(ranks)}-{max(ranks)}, median {sorted(ranks)[len(ranks) // 2]}':>24}  {result.best}")


if __name__ == "__main__":
    main()
