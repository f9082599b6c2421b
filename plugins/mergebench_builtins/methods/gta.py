"""Generalized task arithmetic: θ = θ_pre + λ · combine(sparsify(τ_1), …, sparsify(τ_n)).

Task Arithmetic, TIES, DARE, DELLA and Breadcrumbs are configurations of this one method, as in
mergekit's ``generalized_task_arithmetic``: a per-expert *sparsifier* (none, magnitude top-k,
Bernoulli drop, magnitude-ranked drop, outlier band) and a *combiner* (plain sum, or TIES' sign
election with a disjoint sum or mean). Each method module only picks its pieces.

Magnitude sparsifiers take a ``scope``: ``global`` — one threshold per expert over every merged
tensor, the study's (and the TIES paper's) choice, found exactly in a :meth:`prepare` pass by
radix select (:mod:`mergebench.merging.topk`) — or ``tensor`` — one threshold per tensor,
mergekit's choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Sequence

from mergebench.merging.api import MergeMethod, TensorInputs
from mergebench.merging.sparsify import keep_above
from mergebench.merging.tensors import disjoint_merge, elected_sign, summed, task_vectors
from mergebench.merging.topk import MagnitudeSelector, kth_largest_abs, topk_count
from mergebench_builtins.methods.study_code import with_untied_head

if TYPE_CHECKING:  # torch is imported where tensors are computed: a torch-free merge (merging.plain) never needs it
    import torch

HOLD_ELEMENTS = 8 * 1024 * 1024
"""Up to this many entries (all experts together) a tensor's sparsified task vectors stay in memory."""


class GeneralizedTaskArithmetic(MergeMethod):
    """Subclasses set ``consensus``/``normalize`` and override :meth:`sparsify`.

    Experts are streamed: one task vector in float32 at a time. The sign election needs the sum
    of all sparsified task vectors before any can be kept, so with ``consensus`` a tensor's
    sparsified task vectors are held when they fit in :data:`HOLD_ELEMENTS`, and otherwise (the
    embeddings of a large vocabulary) the experts are read twice — sparsification is
    deterministic per (seed, tensor, expert) and thresholds found in the first pass are reused.
    """

    scales_delta = True
    consensus: ClassVar[bool] = False  # TIES sign election: keep entries agreeing with the elected sign
    normalize: ClassVar[bool] = False  # divide by the number of agreeing experts (TIES' disjoint mean)

    def sparsify(self, name: str, index: int, tau: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
        """Expert ``index``'s sparsified task vector; ``memo`` keeps per-tensor work between passes.

        ``tau`` is a fresh tensor owned by the caller's loop: sparsifiers may modify it in place."""
        return tau

    def sparsified(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor], memo: dict):
        for index, tau in enumerate(task_vectors(experts, base)):
            yield self.sparsify(name, index, tau, memo)

    chunkable: ClassVar[bool] = True
    """Whether sparsification is deterministic and elementwise once per-tensor statistics are known, so a
    large tensor can be merged in row blocks (random sparsifiers draw per whole tensor: not chunkable)."""

    def merge_delta(self, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
        memo: dict = {}
        rows_of = getattr(experts, "task_vector", None)
        if self.chunkable and rows_of is not None and base.dim() >= 1 \
                and base.numel() * len(experts) > HOLD_ELEMENTS and base.shape[0] > 1:
            return self.merge_in_blocks(name, base, experts, rows_of, memo)
        if not self.consensus:
            total = summed(self.sparsified(name, base, experts, memo), owned=True)
            return total / len(experts) if self.normalize else total
        if base.numel() * len(experts) <= HOLD_ELEMENTS:  # small: keep the sparsified task vectors, one pass
            return self.combine(base, list(self.sparsified(name, base, experts, memo)))
        return self.elect_and_merge(base, self.sparsified(name, base, experts, memo), lambda elected: (
            self.agreeing(name, index, tau, elected, memo) for index, tau in enumerate(task_vectors(experts, base))))

    def merge_in_blocks(self, name, base, experts, rows_of, memo) -> torch.Tensor:
        """A tensor too large to hold every expert's task vector (a large vocabulary's embeddings),
        merged block of rows by block: per-tensor statistics first (:meth:`prepare_tensor`, reading
        the experts block by block), then each block like a small tensor. Same result, bounded memory."""
        import torch

        row = base[0].numel()
        step = max(1, HOLD_ELEMENTS // (len(experts) * max(row, 1)))
        blocks = [(start, min(start + step, base.shape[0])) for start in range(0, base.shape[0], step)]
        for index in range(len(experts)):
            self.prepare_tensor(name, index, lambda i=index: (rows_of(i, b) for b in blocks), base.numel(), memo)
        out = torch.empty_like(base)
        for start, stop in blocks:
            part = base[start:stop]
            deltas = [self.sparsify(name, i, rows_of(i, (start, stop)), memo) for i in range(len(experts))]
            out[start:stop] = self.combine(part, deltas)
        return out

    def prepare_tensor(self, name: str, index: int, blocks, numel: int, memo: dict) -> None:
        """Per-tensor statistics of expert ``index`` from its task vector's row blocks (none by default)."""

    def combine(self, base: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
        """Sum, mean or TIES' election of sparsified task vectors held in memory."""
        if self.consensus:  # TIES' election and disjoint merge, without boolean masks (see disjoint_merge);
            # the sum is elect_and_merge's but for the sign of an exact 0, which only entries where every δ
            # is ±0 can have, and there nothing agrees whichever sign is elected
            return disjoint_merge(deltas, self.elect(summed(deltas)), normalize=self.normalize)
        total = summed(deltas, owned=True)
        return total / len(deltas) if self.normalize else total

    def elect_and_merge(self, base: torch.Tensor, deltas: Iterable[torch.Tensor],
                        agreeing: Callable[[torch.Tensor], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> torch.Tensor:
        """TIES' sign election and disjoint merge.

        The elected sign is that of the summed sparsified task vectors (:meth:`elect` decides where
        the sum is 0); ``agreeing(elected)`` then yields (τ, mask of its kept entries with the elected sign), which
        are summed, and averaged over how many experts agree if ``normalize``. A zero entry has no
        sign and never agrees.
        """
        import torch

        total = torch.zeros_like(base)
        for delta in deltas:
            total.add_(delta)
        elected = self.elect(total)
        del total
        kept = torch.zeros_like(base)
        count = torch.zeros(base.shape, dtype=torch.uint8, device=base.device) if self.normalize else None
        for delta, agrees in agreeing(elected):  # each delta is used for the last time: masked in place
            kept.add_(delta.mul_(agrees))
            if count is not None:
                count.add_(agrees)
        return kept.div_(count.clamp_(min=1)) if count is not None else kept

    def elect(self, total: torch.Tensor) -> torch.Tensor:
        """The elected sign as ±1 from the summed sparsified task vectors (accumulated from zeros): + where
        the sum is 0 (sign(0) = 0 would never equal a kept entry's sign). Overrides must return ±1 only."""
        return elected_sign(total)

    def agreeing(self, name: str, index: int, tau: torch.Tensor, elected: torch.Tensor, memo: dict
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a tensor equal to the sparsified τ where the mask is on, the mask of kept entries agreeing with the sign).

        Only the streamed path (tensors too large to hold every expert's sparsified τ) calls this."""
        import torch

        delta = self.sparsify(name, index, tau, memo)
        return delta, torch.sign(delta) == elected  # a zero entry has no sign: never agrees


class MagnitudeSparsified(GeneralizedTaskArithmetic):
    """A sparsifier defined by order statistics of |τ_i|, per tensor or over the whole model.

    Subclasses say which ranks (1 = largest) they need for ``numel`` entries and how to cut
    with the magnitudes found at those ranks.
    """

    def ranks(self, numel: int) -> list[int]:
        raise NotImplementedError

    def cut(self, tau: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
        raise NotImplementedError

    def is_identity(self) -> bool:
        return self.params.get("density", 1.0) >= 1

    def prepare(self, inputs: TensorInputs) -> None:
        MagnitudeSparsified._prepare_thresholds([self], inputs)

    @classmethod
    def prepare_all(cls, methods, inputs: TensorInputs) -> None:
        if cls.prepare is not MagnitudeSparsified.prepare:  # a subclass preparing more: each its own way
            super().prepare_all(methods, inputs)
        else:
            MagnitudeSparsified._prepare_thresholds(methods, inputs)

    @staticmethod
    def _prepare_thresholds(methods, inputs: TensorInputs) -> None:
        """Global thresholds of every method from one pair of passes: the ranks of all densities at once.

        Methods with ``lm_head_in_threshold`` (the study's code) count an untied head too, in a pass of their own."""
        for method in methods:
            method._global = None
        wanted = [m for m in methods if m.params.get("scope") == "global" and not m.is_identity()]
        for with_head in (False, True):
            group = [m for m in wanted if bool(m.params.get("lm_head_in_threshold")) == with_head]
            if not group:
                continue
            source = with_untied_head(inputs) if with_head else inputs
            numel = sum(source.numel(n) for n in source.names())
            ranks = sorted({rank for m in group for rank in m.ranks(numel)})
            found = _global_thresholds(source, ranks)  # per expert, per rank
            for method in group:
                method._global = [[per_expert[ranks.index(rank)] for rank in method.ranks(numel)] for per_expert in found]

    def sparsify(self, name: str, index: int, tau: torch.Tensor, memo: dict | None = None) -> torch.Tensor:
        if self.is_identity():
            return tau
        return self.cut(tau, self.thresholds(index, tau, {} if memo is None else memo))

    def prepare_tensor(self, name: str, index: int, blocks, numel: int, memo: dict) -> None:
        """This tensor's thresholds for expert ``index``, from two passes over its row blocks."""
        if self.is_identity() or getattr(self, "_global", None) is not None or index in memo:
            return
        selector = MagnitudeSelector(self.ranks(numel))
        for block in blocks():
            selector.add(block)
        for block in blocks():
            selector.refine(block)
        memo[index] = selector.thresholds()

    def thresholds(self, index: int, tau: torch.Tensor, memo: dict) -> list[float]:
        """The magnitudes at :meth:`ranks` for expert ``index``: global ones, or this tensor's (memoized)."""
        found = getattr(self, "_global", None)
        if found is not None:
            return found[index]
        if index not in memo:
            memo[index] = [kth_largest_abs(tau, rank) for rank in self.ranks(tau.numel())]
        return memo[index]


def _global_thresholds(inputs: TensorInputs, ranks: Sequence[int]) -> list[list[float]]:
    """Per expert, the magnitudes at ``ranks`` of its task vector over every tensor of ``inputs``."""
    # pass 1: high-bit histograms of every expert's task vector, one tensor at a time
    selectors: list[MagnitudeSelector] = []
    for histograms in inputs.map(lambda _n, base, experts: [MagnitudeSelector.histogram(e - base) for e in experts]):
        selectors = selectors or [MagnitudeSelector(ranks) for _ in histograms]
        for selector, histogram in zip(selectors, histograms):
            selector.add_histogram(histogram)
    # pass 2: low-bit histograms of the entries in the boundary bins only
    for lows in inputs.map(lambda _n, base, experts: [s.low_histograms(e - base) for s, e in zip(selectors, experts)]):
        for selector, low in zip(selectors, lows):
            selector.add_low_histograms(low)
    return [s.thresholds() for s in selectors]


class TopKSparsified(MagnitudeSparsified):
    """Keep the ``density`` fraction of largest-magnitude entries of each task vector."""

    def ranks(self, numel: int) -> list[int]:
        return [topk_count(numel, self.params["density"])]

    def cut(self, tau: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
        return keep_above(tau, thresholds[0])

    def agreeing(self, name, index, tau, elected, memo):
        """Kept and agreeing without materializing the trimmed τ: τ ≥ t where the sign is +, τ ≤ −t where −."""
        import torch

        if self.is_identity():
            return super().agreeing(name, index, tau, elected, memo)
        # the smallest elected float32 stands for 0 so that zero entries never agree
        threshold = max(self.thresholds(index, tau, memo)[0], 1e-45)
        return tau, torch.where(elected > 0, tau >= threshold, tau <= -threshold)
