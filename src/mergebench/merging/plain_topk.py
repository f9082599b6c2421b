"""TIES' per-tensor thresholds for the torch-free merge: the k-th largest |τ_i| of every expert, exact, in about one pass.

Partitioning every |τ| (``numpy.partition``) costs several times a pass over it. Instead a
sample (the first 1/:data:`SAMPLE_SHARE` of every piece) brackets each expert's k-th largest
magnitude; one pass over the tensor, reading the base once for all experts and split over the
workers, then counts the entries above each bracket and keeps those inside it, and partitioning
those few gives the exact value. The bracket is wide (eight standard deviations of the sample's
rank); when it misses anyway, or the tensor is small, every |τ| is partitioned. Either way the
value is the k-th largest, the same float torch's radix select (:mod:`mergebench.merging.topk`) finds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import numpy

    from mergebench.merging.plain import _Tensor

SAMPLE_SHARE = 16


def thresholds(tensor: "_Tensor", k: int, run: Callable, ranges: Sequence[tuple[int, int]]) -> list[float]:
    """Per expert, the ``k``-th largest |τ| of ``tensor`` (``run``: a map over the workers; ``ranges``: their shares)."""
    import numpy

    from mergebench.merging.plain import CHUNK, _Scratch

    n, experts = tensor.numel, len(tensor.experts)
    if n < 4 * CHUNK:
        return list(run(lambda index: _partitioned(tensor, index, k), range(experts)))

    def sample(start: int) -> list["numpy.ndarray"]:
        scratch = _Scratch(experts + 1)
        return [m.copy() for m in tensor.magnitudes(start, min(CHUNK // SAMPLE_SHARE, n - start), scratch)]

    samples = list(run(sample, range(0, n, CHUNK)))
    brackets = [_bracket(numpy.concatenate([s[i] for s in samples]), k / n) for i in range(experts)]

    def count(bounds: tuple[int, int]) -> list[tuple[int, list["numpy.ndarray"]]]:
        scratch = _Scratch(experts + 1)
        found: list[tuple[int, list]] = [(0, []) for _ in range(experts)]
        for start in range(*bounds, CHUNK):
            for i, magnitude in enumerate(tensor.magnitudes(start, min(CHUNK, bounds[1] - start), scratch)):
                low, high = brackets[i]
                above, inside = found[i]
                inside.append(magnitude[(magnitude >= low) & (magnitude <= high)])
                found[i] = (above + int(numpy.count_nonzero(magnitude > high)), inside)
        return found

    counted = list(run(count, ranges))
    out = []
    for i in range(experts):
        above = sum(part[i][0] for part in counted)
        inside = numpy.concatenate([piece for part in counted for piece in part[i][1]])
        if above < k <= above + len(inside):
            rank = len(inside) - (k - above)  # from the smallest, 0-based
            inside.partition(rank)
            out.append(float(inside[rank]))
        else:  # the sample misled the bracket (or held NaN): exact all the same
            out.append(_partitioned(tensor, i, k))
    return out


def _bracket(sample: "numpy.ndarray", share: float) -> tuple["numpy.float32", "numpy.float32"]:
    """(low, high) magnitudes around the sample's (1 − share) quantile, eight standard deviations of its rank apart."""
    position = len(sample) * (1 - share)
    margin = 8 * math.sqrt(len(sample) * share * (1 - share)) + 32
    low, high = (int(min(max(position + d, 0), len(sample) - 1)) for d in (-margin, margin))
    sample.partition((low, high))
    return sample[low], sample[high]


def _partitioned(tensor: "_Tensor", index: int, k: int) -> float:
    """The k-th largest |τ_index| by partitioning all of them; NaN/Inf: NeedsTorch."""
    import numpy

    from mergebench.merging.plain import CHUNK, NeedsTorch, _Scratch

    n = tensor.numel
    magnitudes = numpy.empty(n, numpy.float32)
    scratch = _Scratch(len(tensor.experts) + 1)
    for start in range(0, n, CHUNK):
        scratch.length = min(CHUNK, n - start)
        tau = tensor.task_vector(index, start, scratch, tensor.read(0, start, scratch))
        numpy.abs(tau, out=magnitudes[start:start + scratch.length])
    if not math.isfinite(float(numpy.sum(magnitudes, dtype=numpy.float32))):
        raise NeedsTorch(tensor.name)
    rank = n - k
    magnitudes.partition(rank)
    return float(magnitudes[rank])
