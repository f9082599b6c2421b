"""Search strategies: the full grid, or successive halving on growing item subsets.

Two strategies share one interface:

* :class:`GridSearch` scores every grid point on every validation item.
* :class:`SuccessiveHalving` scores every point on a small prefix of the items, keeps the best
  ``1/eta``, extends the survivors to an ``eta`` times longer prefix — re-using the scores of the
  items they were already scored on — and so on until one point is left or the items run out.

What a point costs is the :class:`Objective`'s business (merging in memory, evaluating without
writing checkpoints); the strategies only ask for per-item scores of item ranges and count
items, so their cost accounting is exact and testable without a model.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from mergebench.errors import UsageError
from mergebench.specs import MethodSpec

MAX_ROUNDS: int | None = 2
"""Rounds successive halving keeps at most: the first, on ``min_items`` units, and the last; ``None``: every
round of eta's schedule.

Why two: the rounds before the finalists' rank on log-likelihood surrogates alone (generated
items join at :data:`~mergebench.search.objective.GENERATION_FROM`), and a middle round only ranks
the survivors again on more of the same items. On the embedded suite that middle round agreed
poorly with the full objective (Kendall τ_b −0.48 on the TIES grid) and cost a quarter of halving's
log-likelihood tokens (3,360 of 13,894). Replayed on three stored grids of the embedded model (TIES, DARE,
Breadcrumbs), the first round followed directly by the two finalists picked points as good as or
better than the three-round schedule's (the README's search section has the figures).

Why the first round drops to ``min_items`` (one unit of 54, where eta's ladder starts at two): its
prefix was sized for a ladder whose middle round re-ranked ten points; alone before the finalists, it
only has to keep two good points among thirty, and on the same three grids one unit did that as well
(better on DARE and Breadcrumbs, a point 0.011 worse on TIES) for about half the tokens. A ladder
of at most ``max_rounds`` rounds is kept as it is.
"""

FINALISTS: int | None = 2
"""Points kept for successive halving's last round, at most; ``None``: eta's own count (3 of 30 points).

Why two: the last round alone scores generated items, so each finalist costs nearly one
evaluation's generation. With ties ordered by grid order, two finalists picked worse points than
three; with the log-probability tie-break (:func:`rank_key`) they pick the same point on the
embedded TIES grid, in 0.88–0.91 of the time (the README's search section has the measurements).
"""


class Objective(Protocol):
    """Scores grid points on validation items; higher objective is better."""

    n_items: int  # items per validation task in the full budget

    def scores(self, points: Sequence[Mapping[str, Any]], start: int, stop: int) -> list[dict[str, list[float]]]:
        """For each point, per-item scores of items ``[start, stop)`` of every validation task.

        Points come in batches so an objective can merge them together (one pass over the
        inputs for a whole group of coefficients).
        """

    def combine(self, scores: Mapping[str, Sequence[float]]) -> float:
        """The objective from the per-item scores gathered so far (e.g. mean normalized score over tasks)."""

    # optional: ``tiebreak(scores) -> float``, what orders points whose objectives are equal (see :func:`rank_key`);
    # without it (or set to None) tied points keep grid order


def soft_key(task: str) -> str:
    """Where an objective's per-item scores keep ``task``'s soft values (:attr:`TaskResult.soft_values`)."""
    return f"{task}~soft"


def rank_key(trial: "Trial") -> tuple[float, float]:
    """How trials scored on the same items are ordered: the objective, then the tie-break.

    Why a tie-break: on the few items of a search's early rounds the surrogates' accuracies take few
    values (all 30 TIES points tied on successive halving's first prefix of the embedded suite), and
    equal objectives used to keep grid order, so the pick followed how the grid was written (the
    smallest λ first). The objective's ``tiebreak`` (the gold answers' mean log-probability) is continuous.
    """
    return trial.objective, trial.tiebreak


def grid_points(spec: MethodSpec, fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every combination of the method's declared grids (Table 7); other hyperparameters at their defaults.

    Knobs that are not always keyed (:attr:`HyperParam.keyed`) appear only when ``fixed`` sets them, so a
    point reads as it did before they existed (and a search's cache key with it)."""
    fixed = dict(fixed or {})
    names = [hp.name for hp in spec.hyperparams if hp.grid and hp.name not in fixed]
    grids = [next(hp for hp in spec.hyperparams if hp.name == n).grid for n in names]
    defaults = {hp.name: hp.default for hp in spec.hyperparams if hp.keyed == "always"}
    return [{**defaults, **fixed, **dict(zip(names, values))} for values in itertools.product(*grids)]


@dataclass
class Trial:
    """One grid point, scored on the search's items ``[0, items)`` so far.

    ``items`` counts the search's units (out of :attr:`Objective.n_items`), not any task's items:
    an objective maps a unit range to a different item range per task, so the lengths of the
    score lists need not equal it.
    """

    params: dict[str, Any]
    scores: dict[str, list[float]] = field(default_factory=dict)
    objective: float = float("-inf")
    seconds: float = 0.0
    items: int = 0
    tiebreak: float = 0.0  # see rank_key


def extend(trials: Sequence[Trial], objective: Objective, stop: int) -> None:
    """Score ``trials`` (all scored on the same prefix so far) on items up to ``stop``."""
    pending = [t for t in trials if t.items < stop]
    if not pending:
        return
    start = pending[0].items
    if any(t.items != start for t in pending):
        raise ValueError("trials of one batch must have been scored on the same items")
    began = time.perf_counter()
    batch = objective.scores([t.params for t in pending], start, stop)
    share = (time.perf_counter() - began) / len(pending)
    for trial, scores in zip(pending, batch):
        for task, values in scores.items():
            trial.scores.setdefault(task, []).extend(values)
        trial.items = stop
        trial.objective = objective.combine(trial.scores)
        tiebreak = getattr(objective, "tiebreak", None)  # optional: None or absent keeps grid order among ties
        trial.tiebreak = tiebreak(trial.scores) if tiebreak is not None else 0.0
        trial.seconds += share


@dataclass
class SearchResult:
    strategy: str
    best: dict[str, Any]
    trials: list[Trial]
    seconds: float
    item_evaluations: int  # items scored, summed over grid points (one unit = one item of every task)
    plan: str = "product"  # the order the grids were searched in (search/plans.py)
    stages: list[dict[str, Any]] = field(default_factory=list)  # a plan's stages, each as its own result

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "plan": self.plan,
            "best": self.best,
            "seconds": self.seconds,
            "item_evaluations": self.item_evaluations,
            "trials": [{"params": t.params, "items": t.items, "objective": t.objective, "tiebreak": t.tiebreak,
                        "seconds": round(t.seconds, 3)}
                       for t in self.trials],
            **({"stages": [{k: v for k, v in stage.items() if k != "trials"} for stage in self.stages]}
               if self.stages else {}),
        }


class Strategy(ABC):
    name = "strategy"

    def key(self) -> dict[str, Any]:
        """What else than the points and items decides the result (a cache key's part); nothing for the grid."""
        return {}

    def run(self, points: Sequence[Mapping[str, Any]], objective: Objective) -> SearchResult:
        if not points:
            raise UsageError("nothing to search: the method declares no hyperparameter grid")
        began = time.perf_counter()
        trials = [Trial(dict(p)) for p in points]
        self._search(trials, objective)
        best = max(trials, key=lambda t: (t.items, *rank_key(t)))
        return SearchResult(self.name, dict(best.params), trials, time.perf_counter() - began,
                            sum(t.items for t in trials))

    @abstractmethod
    def _search(self, trials: list[Trial], objective: Objective) -> None: ...


class GridSearch(Strategy):
    name = "grid"

    def _search(self, trials: list[Trial], objective: Objective) -> None:
        extend(trials, objective, objective.n_items)


class SuccessiveHalving(Strategy):
    """Keep the best ``1/eta`` each round on an ``eta`` times longer item prefix, starting at ``min_items``.

    The rounds are those of Jamieson and Talwalkar's successive halving (as in Hyperband): ``n``
    points, then ``floor(n / eta)``, ... down to one, the item prefix growing by ``eta`` so that
    a round with one point would score all items. That round is skipped: with one point left
    there is nothing to decide, so the pick is made on the last round's prefix (for 30 points
    and 54 units: 30 points on 2 units, 10 on 6, 3 on 18; 136 units in all, 2.5 full evaluations).
    ``finalists`` caps the last round's points and ``max_rounds`` keeps the first round, on
    ``min_items``, and the last ones (the defaults: 30 points on 1 unit, then the best 2 on 18;
    64 units, 1.2 full evaluations; see :data:`MAX_ROUNDS`).

    A round whose prefix holds no item of any task (surrogates of fewer items than units: an
    objective maps units to items in proportion) scores every point ``-inf``; ranking them would
    be grid order, so no point is dropped after it.
    """

    name = "halving"

    def __init__(self, eta: int = 3, min_items: int = 1, finalists: int | None = FINALISTS,
                 max_rounds: int | None = MAX_ROUNDS) -> None:
        if eta < 2:
            raise UsageError("successive halving needs eta >= 2")
        if finalists is not None and finalists < 2:
            raise UsageError("successive halving needs at least 2 finalists (one left is the pick)")
        if max_rounds is not None and max_rounds < 2:
            raise UsageError("successive halving needs max_rounds >= 2 (the first round and the finalists'), "
                             "or None for every round")
        self.eta = eta
        self.min_items = min_items
        self.finalists = finalists
        self.max_rounds = max_rounds

    def key(self) -> dict[str, Any]:
        """What decides the schedule, where it differs from the default: part of a search's cache key (another
        schedule is another search). ``eta``, ``min_items`` and ``finalists`` are left out at their defaults,
        and ``max_rounds`` at ``None``, so that a schedule keeps the key it had before these could differ
        (``max_rounds`` came last: its default, 2, is another search than the three rounds before it)."""
        defaults = inspect.signature(SuccessiveHalving.__init__).parameters
        key = {name: getattr(self, name) for name in ("eta", "min_items", "finalists")
               if getattr(self, name) != defaults[name].default}
        return {**key, "max_rounds": self.max_rounds} if self.max_rounds is not None else key

    def schedule(self, n_points: int, n_items: int) -> list[tuple[int, int]]:
        """``[(points, items), ...]`` per round: the prefix lengths grow by ``eta`` up to ``n_items``."""
        levels = 1  # prefix lengths available: min_items, min_items * eta, ... <= n_items
        while self.min_items * self.eta ** levels <= n_items:
            levels += 1
        needed, left = 1, n_points  # rounds until one point is left, counting that last one
        while left > 1:
            left, needed = max(1, left // self.eta), needed + 1
        rounds = min(needed, levels)
        plan, points = [], n_points
        for r in range(rounds):
            items = n_items if r == rounds - 1 else max(self.min_items, math.ceil(n_items / self.eta ** (rounds - 1 - r)))
            plan.append((points, items))
            points = max(1, points // self.eta)
        if len(plan) > 1 and plan[-1][0] == 1:
            plan.pop()  # one point left: it is the pick; scoring it on more items decides nothing
        if self.finalists is not None and len(plan) > 1:
            plan[-1] = (min(plan[-1][0], self.finalists), plan[-1][1])
        if self.max_rounds is not None and len(plan) > self.max_rounds:
            # the first round, on min_items (see MAX_ROUNDS), then the last ones
            plan = [(plan[0][0], self.min_items)] + plan[len(plan) - self.max_rounds + 1:]
        return plan

    def _search(self, trials: list[Trial], objective: Objective) -> None:
        alive = list(trials)
        for survivors, items in self.schedule(len(trials), objective.n_items):
            if alive[0].objective > float("-inf"):  # a prefix that held no item decided nothing: no cut
                alive = alive[:survivors]
            extend(alive, objective, items)
            alive.sort(key=rank_key, reverse=True)


STRATEGIES = {"grid": GridSearch, "halving": SuccessiveHalving}


def strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise UsageError(f"unknown search strategy {name!r}; choose one of {', '.join(STRATEGIES)}, or none") from None
