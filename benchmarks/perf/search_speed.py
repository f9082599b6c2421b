"""What the hyperparameter validation search costs, for TIES on the embedded model.

Prints, from one run on the same inputs: the time of one evaluation (merge one grid point in
memory and score every validation surrogate once; timed before the searches and again after
them, the mean is the unit), of the full 30-point grid search and of successive halving, each as
a multiple of one evaluation, and whether both searches pick the same point. An untimed
evaluation runs first: the process's first one also pays imports and loading the surrogates'
data (3-9 s more than the next on the emulated Xeon), which the searches after it do not, so it
would flatter them. Each measurement starts from a fresh objective (inputs read, model loaded),
so the one-time costs are in every figure; the input files are read once before any timing, so
all of them read from the page cache.

    MERGEBENCH_CACHE=... python benchmarks/perf/search_speed.py [--model smollm2-135m-instruct] [--method ties]

The model's experts and their surrogate scores come from the artifact cache (built first if
missing, which takes a while on a CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

from mergebench import plugin_manager
from mergebench.cache import ArtifactCache
from mergebench.merging.api import MergeContext
from mergebench.pipeline import Pipeline, RunContext
from mergebench.search.objective import ITEM_ORDER, ITEM_ORDERS, UNITS, MergeObjective, Surrogate
from mergebench.search.stage import surrogates as validation_surrogates
from mergebench.search.strategies import GridSearch, SuccessiveHalving, grid_points, soft_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa_emulation import cpu_model, dispatch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="ties")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-shared-decoding", action="store_true",
                        help="score grid points one at a time (the search before shared decoding)")
    parser.add_argument("--grid-scores", type=Path, default=None, metavar="FILE",
                        help="reuse the full grid's per-point, per-item scores from FILE when its inputs match "
                             "(else run the grid and write them there): the ranks need them, the timing of "
                             "halving does not")
    parser.add_argument("--peer-finalists", type=int, default=None, metavar="N",
                        help="also time halving with N finalists (the peer schedule) in the same run, after ours")
    parser.add_argument("--peer-item-order", choices=[o for o in ITEM_ORDERS if o != ITEM_ORDER], default=None,
                        help="also time halving with the surrogates' items in this order (the peer) in the same run, "
                             "after ours, and replay it on the stored grid's scores")
    parser.add_argument("--peer-max-rounds", type=rounds_arg, default=False, metavar="N|none",
                        help="also time halving with at most N rounds (none: every round of eta's schedule, the "
                             "three-round search before max_rounds) in the same run, after ours, and replay it on the "
                             "stored grid's scores")
    parser.add_argument("--peer-min-items", type=int, default=None, metavar="N",
                        help="also time halving whose first round scores N units (2: 1/27 of the items, the default "
                             "before the first round dropped to one unit of 54) in the same run, after ours, and "
                             "replay it on the stored grid's scores")
    parser.add_argument("--skip-grid", action="store_true",
                        help="never run the grid: use --grid-scores when it holds the grid's scores, else leave the "
                             "grid's figures and the ranks out")
    args = parser.parse_args()

    setup = SearchSetup(args.model, args.method, args.cache_dir)
    model, method, base, experts, surrogates, points = (setup.model, setup.method, setup.base, setup.experts,
                                                        setup.surrogates, setup.points)
    objective = setup.objective

    # read every input file once first: otherwise whichever measurement runs first pays the disk
    # (after a cold run had evicted the page cache, "one evaluation" took 43 s instead of 29)
    for directory in [base.path, *(r.path for r in experts.values())]:
        for file in sorted(directory.glob("*.safetensors")):
            with open(file, "rb") as handle:
                while handle.read(1 << 24):
                    pass

    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())

    def one_evaluation() -> float:
        started = time.perf_counter()
        objective(False).scores([method.resolve_params({})], 0, UNITS)
        return time.perf_counter() - started

    # the process's first evaluation also pays its imports and data partitions (3-9 s more than the
    # next on the emulated Xeon), which every search after it in the same process is spared: not the unit
    first = one_evaluation()
    evaluations = [one_evaluation()]
    share = not args.no_shared_decoding
    stored = stored_grid(args.grid_scores, setup)
    # the grid's objective is not kept: it holds its model, merger and task vectors (RSS 6.2 GB against
    # 4.2 without, on the Zen 5 EPYC), and kept alive it made the halving timed after it take 31.6 s
    # against 21.3 s once dropped, in one process; a user's search never runs beside a finished one's
    grid = stored[0] if stored else None if args.skip_grid else GridSearch().run(points, objective(share))
    replay_objective = objective(share)  # the replays' item ranges and combination: it never loads a model
    if args.grid_scores and grid is not None and not stored:
        store_grid(args.grid_scores, stored_key(setup), grid)
    halving = SuccessiveHalving().run(points, objective(share))
    schedule_peers = []  # (label, strategy) of the peer schedules asked for: timed below, and replayed on the grid
    if args.peer_max_rounds is not False:
        schedule_peers.append((f"max_rounds {args.peer_max_rounds}", SuccessiveHalving(max_rounds=args.peer_max_rounds)))
    if args.peer_min_items:
        schedule_peers.append((f"min_items {args.peer_min_items}", SuccessiveHalving(min_items=args.peer_min_items)))
    peers = []  # (label, result) of each peer asked for, timed after ours in this order
    if args.peer_finalists:
        peers.append((f"halving, {args.peer_finalists} finalists",
                      SuccessiveHalving(finalists=args.peer_finalists).run(points, objective(share))))
    if args.peer_item_order:
        peers.append((f"halving, {args.peer_item_order} order",
                      SuccessiveHalving().run(points, objective(share, args.peer_item_order))))
    for label, strategy in schedule_peers:
        peers.append((f"halving, {label}", strategy.run(points, objective(share))))
    evaluations.append(one_evaluation())  # once more at the end: a run's evaluations varied by up to 10%
    one = sum(evaluations) / len(evaluations)
    if grid is None:  # --skip-grid before the grid's scores were stored (a run with --grid-scores FILE stores them)
        stored = stored_grid(args.grid_scores, setup)
        grid = stored[0] if stored else None

    print(f"CPU {cpu_model()}; {dispatch()}; "
          f"load average {load_before} at the start, {', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print(f"{model.name}, {method.name}: {len(points)} grid points, {len(experts)} experts, "
          f"{'shared' if share else 'one-at-a-time'} decoding, "
          f"surrogates {', '.join(f'{s.spec.name} ({s.items})' for s in surrogates)}")
    print(f"{'':24}{'seconds':>10}{'x one evaluation':>20}{'item-evaluations':>20}")
    print(f"{'one evaluation':24}{one:10.1f}{1.0:20.2f}{UNITS:20d}  (mean of {', '.join(f'{e:.1f}' for e in evaluations)}: "
          "timed before and after the searches; the process's first, untimed as the unit, "
          f"{first:.1f})")
    for result in (grid, halving):
        if result is None:
            continue
        label = result.strategy + " search" + (" (stored)" if result is grid and stored else "")
        print(f"{label:24}{result.seconds:10.1f}{result.seconds / one:20.2f}{result.item_evaluations:20d}")
    if stored:
        print(f"(grid: per-item scores and seconds from {args.grid_scores}, {stored[1]}, not timed in this run)")
    for label, peer in peers:
        print(f"{label:24}{peer.seconds:10.1f}{peer.seconds / one:20.2f}{peer.item_evaluations:20d}  "
              f"(picks {peer.best}; ours / peer {halving.seconds / peer.seconds:.2f})")
    print(f"halving's schedule: {SuccessiveHalving().schedule(len(points), UNITS)} (points, units); "
          f"finalists' trials {[(t.params, round(t.objective, 4)) for t in halving.trials if t.items == max(x.items for x in halving.trials)]}")
    if grid is None:
        print(f"halving picks {halving.best}; no stored grid scores, so no ranks (run once with --grid-scores FILE)")
        return
    if stored:  # the grid's pick among tied points by this code's tie-break, not the one it was stored with
        grid.best = GridSearch().run(points, Replay(grid.trials, replay_objective)).best
    same = grid.best == halving.best
    print(f"grid picks {grid.best}; halving picks {halving.best}: {'the same point' if same else 'DIFFERENT points'}")
    full = {params_key(t.params): t.objective for t in grid.trials}
    picked = full[params_key(halving.best)]
    print(f"on all validation items: grid's pick {max(full.values()):.4f}, halving's pick {picked:.4f} "
          f"(grid rank {rank_of(halving.best, full)} of {len(full)})")
    # how finely halving's prefixes can rank: distinct objective values of all points on each prefix
    replay = Replay(grid.trials, replay_objective)
    distinct = []
    for _points, units in SuccessiveHalving().schedule(len(points), UNITS):
        scored = replay.scores(points, 0, units)
        values = {round(replay.combine(scores), 9) for scores in scored}
        keys = {tuple(round(v, 9) for v in replay.rank_values(scores)) for scores in scored}
        distinct.append(f"{len(values)} on {units}/{UNITS} ({len(keys)} with the tie-break)")
    print(f"distinct objective values of the {len(points)} points on halving's prefixes: {', '.join(distinct)} "
          f"(tied objectives are ordered by the gold answers' mean log-probability)")
    print("rank agreement with the grid (halving's ranking on each round's prefix against all items): "
          + "; ".join(round_agreement(halving, replay, full)))
    variants = [("with the tie-break", replay),
                ("with the tie-break, items in index order", Replay(grid.trials, objective(share, "index"))),
                ("without it (ties in grid order)", Replay(grid.trials, replay_objective, False))]
    schedules = [("", SuccessiveHalving()), *((f", {label}", strategy) for label, strategy in schedule_peers)]
    for (label, scores), (schedule_label, strategy) in itertools.product(variants, schedules):
        label += schedule_label
        pick = strategy.run(points, scores).best
        ranks = replay_ranks(scores, points, full, halving=strategy)
        print(f"halving replayed on the grid's per-item scores {label}: picks {pick} (grid rank "
              f"{rank_of(pick, full)}); in {len(ranks)} random point orders rank {min(ranks)} to {max(ranks)} "
              f"of {len(points)}, median {sorted(ranks)[len(ranks) // 2]}")


class SearchSetup:
    """One model's and method's search inputs from the artifact cache: the base, the experts (built first if
    missing), the validation surrogates with the experts' reference scores, and the method's grid."""

    def __init__(self, model_name: str, method_name: str, cache_dir: str | None = None) -> None:
        registries = plugin_manager.registries()
        self.pipeline = Pipeline(RunContext(cache=ArtifactCache(cache_dir), device="cpu"), registries)
        self.model, self.method = registries.models.get(model_name), registries.methods.get(method_name)
        self.base = self.pipeline.base(self.model)
        self.experts = self.pipeline.experts(self.model, self.base)
        tasks = validation_surrogates(registries, self.model)
        references = {t.name: self.pipeline.evaluate(self.experts[t.domain], t) for t in tasks}
        self.surrogates = [Surrogate(t, references[t.name].n, references[t.name].score) for t in tasks]
        self.context = MergeContext(device="cpu", exclude=self.pipeline.context.exclude, domains=tuple(self.experts))
        self.points = grid_points(self.method)

    def objective(self, share_decoding: bool = True, item_order: str = ITEM_ORDER) -> MergeObjective:
        """A fresh objective: model and inputs are loaded again on its first point, as every search pays them."""
        from mergebench.evaluation.hf import HFLanguageModel

        context = self.pipeline.context
        return MergeObjective(self.method, self.base.path, {d: r.path for d, r in self.experts.items()}, self.context,
                              self.surrogates, make_task=lambda spec, limit: spec.load()(spec, context, limit=limit),
                              load_model=lambda: HFLanguageModel.from_pretrained(self.base.path, batch_size=16, device="cpu"),
                              share_decoding=share_decoding, item_order=item_order)


def rounds_arg(text: str) -> int | None:
    """``--peer-max-rounds``: a number of rounds, or ``none`` for every round."""
    return None if text.lower() == "none" else int(text)


def stored_key(setup: SearchSetup) -> str:
    """What the grid's per-item scores depend on: the inputs (their cache folders name their keys; the
    cache's root is left out, so a stored file serves a cache moved elsewhere),
    the points and the surrogates with their item counts and references. Not the search's units or item
    order: a full grid scores every item of every surrogate, and the file keeps them in index order."""
    blob = json.dumps({"model": setup.model.name, "method": setup.method.name, "points": setup.points,
                       "base": artifact_name(setup.base.path),
                       "experts": {d: artifact_name(r.path) for d, r in setup.experts.items()},
                       "surrogates": [[s.spec.name, s.spec.version, s.items, s.reference] for s in setup.surrogates],
                       "stored": "values and soft_values, every item in index order"},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def artifact_name(path: Path) -> str:
    """An artifact as its kind and key (``expert/<sha256>``): the same inputs in a cache moved or copied elsewhere."""
    return f"{path.parent.name}/{path.name}"


def stored_grid(path: Path | None, setup: SearchSetup):
    """The stored grid result and its timestamp when ``path`` holds one for these inputs, else None."""
    from mergebench.search.strategies import SearchResult, Trial

    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != stored_key(setup):
        print(f"{path}: stored grid scores are for other inputs; running the grid again")
        return None
    trials = [Trial(t["params"], t["scores"], t["objective"], t["seconds"], t["items"]) for t in data["trials"]]
    return SearchResult("grid", data["best"], trials, data["seconds"], data["item_evaluations"]), data["when"]


def store_grid(path: Path, key: str, grid) -> None:
    data = {"key": key, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "best": grid.best,
            "seconds": grid.seconds, "item_evaluations": grid.item_evaluations,
            "trials": [{"params": t.params, "scores": t.scores, "objective": t.objective, "seconds": t.seconds,
                        "items": t.items} for t in grid.trials]}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, default=str))
    os.replace(temporary, path)


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

    def __init__(self, trials, objective: MergeObjective, tiebreak: bool = True) -> None:
        self.stored = {params_key(t.params): t.scores for t in trials}
        self.objective = objective
        if not tiebreak:  # ties keep grid order, as before the tie-break (strategies.rank_key)
            self.tiebreak = None

    def scores(self, points, start, stop):
        out = []
        for p in points:
            stored, scored = self.stored[params_key(p)], {}
            for s in self.objective.surrogates:
                items = self.objective.items(s, start, stop)  # in the objective's item order (ITEM_ORDER)
                for name in (s.spec.name, soft_key(s.spec.name)):
                    values = stored.get(name, [])
                    scored[name] = [values[i] for i in items] if values else []
            out.append(scored)
        return out

    def combine(self, scores):
        return self.objective.combine(scores)

    def tiebreak(self, scores):
        return self.objective.tiebreak(scores)

    def rank_values(self, scores) -> tuple[float, float]:
        """What halving orders points by on these scores (strategies.rank_key)."""
        return self.combine(scores), self.tiebreak(scores)


def replay_ranks(replay: Replay, points, full: dict[str, float], orders: int = 200, seed: int = 0,
                 halving: SuccessiveHalving | None = None) -> list[int]:
    """Rank on all items (``full``: objective by params key) of halving's pick, in shuffled point orders."""
    import random

    rng, ranks = random.Random(seed), []
    for _ in range(orders):
        order = [dict(p) for p in points]
        rng.shuffle(order)
        ranks.append(rank_of((halving or SuccessiveHalving()).run(order, replay).best, full))
    return ranks


def kendall_tau_b(xs: list[float], ys: list[float]) -> float:
    """Kendall's τ_b (ties in either ranking counted as such): 1 = the same order, 0 = unrelated."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")


def round_agreement(halving, replay: Replay, full: dict[str, float]) -> list[str]:
    """Per round of ``halving``'s schedule: Kendall's τ_b between the round's points ranked on the round's
    prefix (what halving decided on) and the same points ranked on all items (the grid)."""
    lines = []
    by_items: dict[int, list[dict]] = {}
    for trial in halving.trials:
        by_items.setdefault(trial.items, []).append(dict(trial.params))
    reached = sorted(by_items)  # the prefixes; a point scored on prefix k also took part in every round before it
    for k, units in enumerate(reached):
        members = [p for stop in reached[k:] for p in by_items[stop]]
        decided = [replay.rank_values(s) for s in replay.scores(members, 0, units)]
        order = sorted(set(decided))
        prefix = [float(order.index(key)) for key in decided]  # the round's order, the tie-break included
        tau = kendall_tau_b(prefix, [full[params_key(p)] for p in members])
        lines.append(f"{len(members)} points on {units}/{UNITS}: tau_b {tau:+.2f}")
    return lines


if __name__ == "__main__":
    main()
