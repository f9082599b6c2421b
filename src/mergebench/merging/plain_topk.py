"""TIES per tensor in the torch-free merge: its thresholds (the k-th largest |τ_i|), exact, without a pass of their own.

Partitioning every |τ| (``numpy.partition``) and then merging costs two passes over every task
vector and several times a pass in the partition. Instead a sample (:data:`SAMPLE_BLOCKS` blocks spread over the
tensor) brackets each expert's threshold between ``low`` and ``high``, and the tensor is
merged at once as if |τ| ≥ high were kept and |τ| < low dropped — which the threshold, once known,
confirms for every entry outside the bracket. That same pass counts the entries above each bracket
and keeps those inside it (a few percent), from which a partition gives the exact threshold; the
entries where any expert's |τ| fell inside its bracket are then merged again with it. The bracket
spans three standard deviations of the sample's rank each way; when it misses anyway, or the tensor is
small, every |τ| is partitioned and the tensor merged with the thresholds found. Either way each
threshold is the k-th largest |τ|, the value torch's radix select (:mod:`mergebench.merging.topk`)
finds, and every entry is merged with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy

    from mergebench.merging.plain import _Scratch, _Tensor

SAMPLE_BLOCKS, SAMPLE_BLOCK, SAMPLE_SHARE = 8, 4096, 16
"""The sample: 8 blocks spread over the tensor, each of 4096 entries or 1/(16·8) of the tensor if that is fewer
(few blocks: each costs a read of every input and a dozen numpy calls)."""


def brackets(tensor: "_Tensor", k: int, run: Callable) -> list[tuple["numpy.float32", "numpy.float32"]] | None:
    """Per expert, (low, high) around its k-th largest |τ| from a sample; None for a tensor too small to sample."""
    import numpy

    from mergebench.merging.plain import CHUNK, _scratch

    n, experts = tensor.numel, len(tensor.experts)
    if n < CHUNK:
        return None

    length = min(SAMPLE_BLOCK, n // (SAMPLE_SHARE * SAMPLE_BLOCKS) or 1)
    starts = [i * n // SAMPLE_BLOCKS for i in range(SAMPLE_BLOCKS)]  # spread over the tensor's rows

    def sample(start: int) -> list["numpy.ndarray"]:
        return [m.copy() for m in tensor.magnitudes(start, length, _scratch(experts + 1))]

    with numpy.errstate(all="ignore"):  # an overflow shows in the merge (NeedsTorch)
        samples = list(map(sample, starts))  # small: the workers would spend more on handing it out
    return [_bracket(numpy.concatenate([s[i] for s in samples]), k / n) for i in range(experts)]


def _bracket(sample: "numpy.ndarray", share: float) -> tuple["numpy.float32", "numpy.float32"]:
    """(low, high) magnitudes around the sample's (1 − share) quantile, three standard deviations of its rank each way."""
    position = len(sample) * (1 - share)
    margin = 3 * math.sqrt(len(sample) * share * (1 - share)) + 2
    low, high = (int(min(max(position + d, 0), len(sample) - 1)) for d in (-margin, margin))
    sample.partition((low, high))
    return sample[low], sample[high]


class Record:
    """What one worker's share of a bracketed merge saw: per expert, how many |τ| were above its bracket's high end
    and at it; and the entries where any expert's |τ| was in [low, high), with base and task vectors, to merge
    again (and to find the thresholds among). |τ| ≥ high is kept whatever the threshold in [low, high] turns out to
    be, |τ| < low dropped; with the repeated magnitudes of bf16 task vectors low and high are often the same value
    and nothing is left to merge again."""

    def __init__(self, experts: int) -> None:
        self.above = [0] * experts
        self.at_or_above = [0] * experts
        self.positions: list = []
        self.base: list = []
        self.taus: list[list] = [[] for _ in range(experts)]

    def add(self, start: int, base: "numpy.ndarray", taus: list["numpy.ndarray"], brackets, scratch: "_Scratch"
            ) -> list["numpy.ndarray"]:
        """Record the piece at ``start``; return each τ's mask of |τ| ≥ high (kept whatever the threshold)."""
        import numpy

        magnitude = scratch.extra[0][:scratch.length]
        keeps, near = [], None
        for i, (tau, (low, high)) in enumerate(zip(taus, brackets)):
            numpy.abs(tau, out=magnitude)
            keep = magnitude >= high
            self.at_or_above[i] += int(numpy.count_nonzero(keep))
            self.above[i] += int(numpy.count_nonzero(magnitude > high))
            if low < high:  # [low, high): at or above low and not kept, as keep lies within "at or above low"
                inside = numpy.greater_equal(magnitude, low, out=scratch.near[near is not None][:scratch.length])
                inside ^= keep
                near = inside if near is None else numpy.logical_or(near, inside, out=near)
            keeps.append(keep)
        if near is not None:  # an expert's |τ| in its bracket: found again among the recorded τ once all are seen
            where = numpy.flatnonzero(near)
            if len(where):
                self.positions.append(where + start)
                self.base.append(base[where])
                for i, tau in enumerate(taus):
                    self.taus[i].append(tau[where])
        return keeps


def finish_speculation(tensor: "_Tensor", k: int, brackets, records: list[Record], out: "numpy.ndarray") -> bool:
    """The exact thresholds from the records, and the recorded entries merged again with them into ``out``.

    False when a threshold lies outside its bracket: that one is then found by partitioning (the others are kept in
    ``tensor.thresholds``) and the caller merges the tensor again."""
    import numpy

    from mergebench.merging.plain import _elect_and_merge, _finish, _Scratch, _trim

    positions = [p for r in records for p in r.positions]
    taus = [numpy.concatenate([piece for r in records for piece in r.taus[i]]) if positions
            else numpy.empty(0, numpy.float32) for i in range(len(tensor.experts))]
    thresholds, missed = [], False
    for i, (low, high) in enumerate(brackets):
        above, at_or_above = sum(r.above[i] for r in records), sum(r.at_or_above[i] for r in records)
        if above < k <= at_or_above:
            thresholds.append(float(high))
            continue
        magnitudes = numpy.abs(taus[i])  # every |τ_i| in [low, high) is among the recorded entries
        inside = magnitudes[(magnitudes >= low) & (magnitudes < high)]
        if not at_or_above < k <= at_or_above + len(inside):
            thresholds.append(_partitioned(tensor, i, k))
            missed = True
            continue
        rank = len(inside) - (k - at_or_above)  # from the smallest, 0-based
        inside.partition(rank)
        thresholds.append(float(inside[rank]))
    tensor.thresholds = thresholds
    if missed:
        return False
    if not positions:
        return True
    positions = numpy.concatenate(positions)
    scratch = _Scratch(0, len(positions))
    base = numpy.concatenate([piece for r in records for piece in r.base])
    merged = numpy.empty(len(positions), out.dtype)
    with numpy.errstate(all="ignore"):
        _finish(_elect_and_merge(_trim(taus, thresholds, scratch), scratch), base, tensor.form.scaling, merged,
                scratch, tensor.name)
    out[positions] = merged
    return True


def thresholds(tensor: "_Tensor", k: int, run: Callable) -> list[float]:
    """Per expert, the k-th largest |τ| by partitioning all of them (small tensors, and a bracket that missed)."""
    return list(run(lambda index: _partitioned(tensor, index, k), range(len(tensor.experts))))


def _partitioned(tensor: "_Tensor", index: int, k: int) -> float:
    import numpy

    from mergebench.merging.plain import CHUNK, NeedsTorch, _scratch

    n = tensor.numel
    magnitudes = numpy.empty(n, numpy.float32)
    scratch = _scratch(len(tensor.experts) + 1)
    for start in range(0, n, CHUNK):
        scratch.length = min(CHUNK, n - start)
        tau = tensor.task_vector(index, start, scratch, tensor.read(0, start, scratch))
        numpy.abs(tau, out=magnitudes[start:start + scratch.length])
    if not math.isfinite(float(numpy.sum(magnitudes, dtype=numpy.float32))):
        raise NeedsTorch(tensor.name)
    rank = n - k
    magnitudes.partition(rank)
    return float(magnitudes[rank])
