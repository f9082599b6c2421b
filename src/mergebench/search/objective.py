"""The validation objective of the hyperparameter search: merge in memory, score surrogate items.

For one model and method, every grid point is merged by
:class:`~mergebench.search.grid_merge.GridMerger` (inputs read once for the whole search, points
that differ only in λ share one merged task vector, kept across rounds) into one resident model
(no checkpoint is written), and scored on the validation surrogates (tasks with
``role="validation"``: Appendix B.2 of the study). The objective is the mean over surrogates of
the merged score relative to the domain expert's score on the same surrogate (inverted for
lower-is-better metrics), i.e. the normalized performance the study reports, measured on
validation data. Points whose objectives tie are ordered by the surrogates' soft values (the gold
answers' mean log-probability: :attr:`~mergebench.evaluation.api.TaskResult.soft_values`).

Points of methods whose merges are ``base + λ·Δ`` (TIES, DARE, Task Arithmetic, ...) are scored
together through :mod:`~mergebench.search.shared_decoding` when the model can tell the rows of
a batch apart (:class:`~mergebench.evaluation.api.RowTrackingModel`): their generations share
decode steps, which one point at a time would pay alone whatever its item count; each point's
log-likelihoods run on its own weights. Other methods load each point's state dict in turn.

Item ranges: surrogate ``t`` with ``L_t`` items is scored on positions ``[round(start L_t / N),
round(stop L_t / N))`` of its item order for the search's item range ``[start, stop)`` out of
``N`` (:func:`item_span`), so every surrogate grows in proportion and no item is scored twice for
one point. A log-likelihood surrogate's order is its items shortest first (:data:`ITEM_ORDER`);
all ``N`` units are every item whatever the order, so a full grid scores exactly what it did.
Surrogates scored from generated text (``Task.generates``) keep their own order and join later,
at unit :data:`GENERATION_FROM`, with all their items up to there at once: cheap items first, for
the rounds with many points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mergebench.errors import UsageError
from mergebench.evaluation.api import ForwardingModel, LanguageModel, Loglikelihood, RowTrackingModel
from mergebench.merging.api import MergeContext
from mergebench.results import ratio
from mergebench.search.strategies import soft_key
from mergebench.specs import MethodSpec, TaskSpec

UNITS = 54
"""Resolution of the search's item ranges: eta = 3's rounds of successive halving (2, 6 and 18 units of 54,
the prefixes 1/27, 1/9 and 1/3 of the items), and a first round of one unit below them.

Why 54 and not 27: halving's first round (every point, :data:`~mergebench.search.strategies.MAX_ROUNDS`)
scores one unit. On the embedded model's three stored grids (TIES, DARE, Breadcrumbs), 1/54 of the items
picked the grid's best point on DARE and Breadcrumbs and one 0.011 worse than 1/27's pick on TIES (mean
regret 0.008 against 0.017), for 100 log-likelihood tokens a point instead of 222 (the README's search
section has the figures). Rounds at even units score exactly
the items they scored out of 27 (:func:`item_span` rounds the same fraction), so the full grid and the
finalists' items are unchanged."""

TINY = 1e-300
"""The floor of a soft value before its log: a probability that underflowed to 0 still ranks last."""

GENERATION_FROM = UNITS // 3
"""The unit from which items scored from generated text count: successive halving's finalists' round
(18/54, a third of the items: the default schedule's second round, eta 3's third).

Why: a generated item costs every point its own decode steps where a log-likelihood item costs
one forward pass, so the rounds with many points rank on log-likelihood surrogates only, and
from this unit on the finalists score every generated item they would have had, deciding on the
same items as before (the README's search section has the measurements). A full grid scores
all units at once and is unaffected.
"""


ITEM_ORDER = "shortest_first"
"""The order in which a log-likelihood surrogate's items fill the search's units: fewest characters
of request text first (each distinct context once, as the packed forward computes it, plus every
continuation), ties by item index.

Why: halving's first round scores every point on its first unit of items (when that unit was 1/27, about
half of halving's log-likelihood tokens), and an item's text runs from tens to thousands of tokens. On the embedded
TIES grid the shortest items cut halving's log-likelihood tokens from 19,044 to 13,894 with a pick
of the same rank on all items (the README's search section). Characters, not tokens: the order is
the same for every backend and tokenizer, and it is part of the search's cache key.
"""

ITEM_ORDERS = ("shortest_first", "index")
"""``index``: items in the task's own order (the search before :data:`ITEM_ORDER`; a peer to measure against)."""


@dataclass
class Surrogate:
    spec: TaskSpec
    items: int  # full number of items
    reference: float  # the domain expert's score on all items


def item_span(start: int, stop: int, items: int, units: int, first_unit: int = 0) -> tuple[int, int]:
    """The items ``[first, last)`` of a task with ``items`` items that the units ``[start, stop)`` of ``units`` cover.

    Units below ``first_unit`` cover no item of the task; the unit range reaching it covers all
    the items the units before it would have (see :data:`GENERATION_FROM`).

    Rounded to the nearest item (halves up), not up, because rounding up gave every small task
    an item in the first unit, far more than its share of the first round. A task smaller than
    ``units`` joins when its first item's share is reached. Monotone in the unit, so consecutive
    ranges partition the items, and ``units`` units are every item.
    """
    def covered(unit: int) -> int:
        return 0 if unit < first_unit else (2 * unit * items + units) // (2 * units)

    return covered(start), covered(stop)


def index_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """The item indices as ascending ranges ``[first, last)`` of consecutive items (what ``Task.item_range`` scores)."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


class _RequestText(ForwardingModel):
    """The resident model as a task sees it, but only counting the characters of its log-likelihood requests."""

    def __init__(self, lm: LanguageModel) -> None:
        super().__init__(lm)
        self.characters = 0

    def generate(self, requests):
        return ["" for _ in requests]

    def loglikelihood(self, requests):
        self.characters += sum(len(c) for c in {r.context for r in requests}) + sum(len(r.continuation) for r in requests)
        return [Loglikelihood(-1.0, 1, False) for _ in requests]


class _Resident:
    """What the views of one objective share: loaded once, on the first point scored."""

    lm = None
    merger = None
    batch = None


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


class MergeObjective:
    """:class:`mergebench.search.strategies.Objective` over in-memory merges of one (model, method)."""

    n_items = UNITS

    def __init__(self, method: MethodSpec, base_dir: Path, expert_dirs: Mapping[str, Path], context: MergeContext,
                 surrogates: Sequence[Surrogate], make_task: Callable[[TaskSpec, int], Any],
                 load_model: Callable[[], Any], share_decoding: bool = True, item_order: str = ITEM_ORDER) -> None:
        if item_order not in ITEM_ORDERS:
            raise UsageError(f"unknown item order {item_order!r}; one of {', '.join(ITEM_ORDERS)}")
        self.first_unit: dict[str, int] = {}
        """Per surrogate, the unit its items start counting from (:data:`GENERATION_FROM` for generated ones)."""
        for s in surrogates:
            probe = make_task(s.spec, s.items)
            if not probe.supports_start:
                raise UsageError(f"validation task {s.spec.name!r} cannot score item ranges; it cannot serve the search")
            self.first_unit[s.spec.name] = GENERATION_FROM if probe.generates else 0
        self.method, self.base_dir, self.expert_dirs, self.context = method, base_dir, expert_dirs, context
        self.surrogates = list(surrogates)
        self.make_task = make_task
        self._load_model = load_model
        self._resident = _Resident()  # the model, merger and shared batch: one per search, whatever view scores
        self.share_decoding = share_decoding
        self.item_order = item_order
        self._orders: dict[str, list[int]] = {}

    @property
    def _lm(self):
        return self._resident.lm

    @property
    def _merger(self):
        return self._resident.merger

    @property
    def _batch(self):
        return self._resident.batch

    def only(self, domain: str) -> "MergeObjective":
        """The same search scored on ``domain``'s surrogates alone (a per-task stage), sharing the loaded model."""
        import copy

        view = copy.copy(self)
        view.surrogates = [s for s in self.surrogates if s.spec.domain == domain]
        return view

    def domains(self) -> list[str]:
        """The domains that have a surrogate, in the order of the merge's experts."""
        covered = {s.spec.domain for s in self.surrogates}
        return [d for d in self.context.domains if d in covered]

    def release(self, points) -> None:
        """Drop the merged task vectors of ``points``' groups: a finished stage's are not asked for again."""
        if self._merger is not None:
            for group in self._merger.forget(points):
                if self._batch is not None:
                    self._batch.deltas.pop(group, None)

    def _load(self) -> None:
        from mergebench.search.grid_merge import GridMerger

        if self._lm is None:
            self._resident.lm = self._load_model()
            self._resident.merger = GridMerger(self.method, self.base_dir, self.expert_dirs, context=self.context)

    def scores(self, points, start, stop):
        self._load()
        scaled = self._merger.scaled(points) if self.share_decoding else None
        if scaled is not None and isinstance(self._lm, RowTrackingModel):
            return self._scores_shared(scaled, start, stop)
        wanted = {_key(self.method.resolve_params(p)): i for i, p in enumerate(points)}
        out: list[dict[str, list[float]] | None] = [None] * len(points)
        for params, state in self._merger.merge(points):
            self._lm.model.load_state_dict(state, strict=False)
            out[wanted[_key(params)]] = self._score(self._lm, start, stop)
        return out

    def _scores_shared(self, scaled, start, stop):
        """Points that are ``base + λ·Δ`` evaluated together (:mod:`mergebench.search.shared_decoding`)."""
        from mergebench.search.shared_decoding import DeltaBatch, Variant

        if self._batch is None:
            self._resident.batch = DeltaBatch(self._lm, self._merger.base, {})
        for _params, group, _scale in scaled:
            self._batch.deltas.setdefault(group, self._merger.delta(group))
        variants, runs, slots = [], [], []
        # one job per surrogate and run of consecutive items: a round then holds every task's calls,
        # and each point's calls of a round are served together on its weights, written once
        jobs = [(s, run) for s in self.surrogates for run in self.item_runs(s, start, stop)]
        for i, (_params, group, scale) in enumerate(scaled):
            for surrogate, (first, last) in jobs:
                variants.append(Variant(group, scale))
                runs.append(lambda lm, s=surrogate, a=first, b=last: self._score_run(lm, s, a, b))
                slots.append(i)
        out = [self._empty() for _ in scaled]
        for i, scored in zip(slots, self._batch.evaluate(variants, runs)):
            for name, values in scored.items():  # the surrogate's scores and soft values, under their own keys
                out[i][name].extend(values)
        return out

    def _empty(self) -> dict[str, list[float]]:
        return {name: [] for s in self.surrogates for name in (s.spec.name, soft_key(s.spec.name))}

    def _score(self, lm, start: int, stop: int) -> dict[str, list[float]]:
        out = self._empty()
        for surrogate in self.surrogates:
            for first, last in self.item_runs(surrogate, start, stop):
                for name, values in self._score_run(lm, surrogate, first, last).items():
                    out[name].extend(values)
        return out

    def _score_run(self, lm, surrogate: Surrogate, first: int, last: int) -> dict[str, list[float]]:
        """The surrogate's per-item scores of its items ``[first, last)``, and their soft values (:func:`soft_key`)."""
        name = surrogate.spec.name
        result = self._task(surrogate, first, last).evaluate(lm)
        return {name: result.values, soft_key(name): result.soft_values}

    def _task(self, surrogate: Surrogate, first: int, last: int):
        """``surrogate``'s task on its items ``[first, last)``."""
        return self.make_task(surrogate.spec, last).item_range(first, last)

    def span(self, surrogate: Surrogate, start: int, stop: int) -> tuple[int, int]:
        """The positions in ``surrogate``'s item order that the search's units ``[start, stop)`` cover."""
        return item_span(start, stop, surrogate.items, self.n_items, self.first_unit[surrogate.spec.name])

    def items(self, surrogate: Surrogate, start: int, stop: int) -> list[int]:
        """The indices of the items of ``surrogate`` that the units ``[start, stop)`` cover, ascending."""
        first, last = self.span(surrogate, start, stop)
        if last - first == surrogate.items:  # every item (a full grid): no order needed
            return list(range(surrogate.items))
        return sorted(self.order(surrogate)[first:last])

    def item_runs(self, surrogate: Surrogate, start: int, stop: int) -> list[tuple[int, int]]:
        return index_runs(self.items(surrogate, start, stop))

    def order(self, surrogate: Surrogate) -> list[int]:
        """``surrogate``'s item indices in the order they fill the units (:data:`ITEM_ORDER`; generated ones as listed)."""
        name = surrogate.spec.name
        if name not in self._orders:
            if self.first_unit[name] or self.item_order == "index":
                self._orders[name] = list(range(surrogate.items))
            else:
                self._load()
                costs = []
                for index in range(surrogate.items):
                    counter = _RequestText(self._lm)
                    self._task(surrogate, index, index + 1).evaluate(counter)
                    costs.append(counter.characters)
                self._orders[name] = sorted(range(surrogate.items), key=lambda i: (costs[i], i))
        return self._orders[name]

    def combine(self, scores: Mapping[str, Sequence[float]]) -> float:
        ratios = []
        for surrogate in self.surrogates:
            values = scores.get(surrogate.spec.name) or []
            if values:
                value = ratio(sum(values) / len(values), surrogate.reference, surrogate.spec.higher_is_better)
                ratios.append(0.0 if value is None else value)
        return sum(ratios) / len(ratios) if ratios else float("-inf")

    def tiebreak(self, scores: Mapping[str, Sequence[float]]) -> float:
        """The mean over surrogates of the mean log soft value (log-probability of the gold answer).

        Continuous where accuracies tie on few items. The log, a proper scoring rule, and not the
        probability itself: scaling task vectors up makes a model surer of every answer, right or
        wrong, and the mean probability rewarded that (the embedded TIES grid replayed: halving's pick
        ranked 17th of 30 on all items by mean probability, 10th by mean log-probability, 26th in grid
        order; the README's search section).
        """
        means = [sum(math.log(max(v, TINY)) for v in values) / len(values)
                 for s in self.surrogates if (values := scores.get(soft_key(s.spec.name)))]
        return sum(means) / len(means) if means else 0.0
