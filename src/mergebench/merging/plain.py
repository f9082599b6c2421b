"""A merge without torch, for the methods whose arithmetic is elementwise float32: task arithmetic and TIES per tensor.

Why: ``import torch`` alone takes longer than merging a 135M model's five experts, and numpy does
the same float32 arithmetic exactly (every operation here is one IEEE-rounded add, subtract,
multiply or divide, applied in the order the torch code applies it; bf16 is float32's upper half,
so widening is a shift and narrowing is torch's own round-to-nearest-even on the integer bits).
The merged bytes are identical to the torch engine's (``tests/test_plain_merge.py`` checks them
against it); whatever this module cannot do exactly it refuses up front (:func:`plain_form`), and
a value it cannot judge — NaN or Inf in an input, or an overflow, whose error or bits the torch
path defines — raises :class:`NeedsTorch`; the caller then discards what was written and merges with torch.

Each tensor is cut into pieces of :data:`CHUNK` entries that stay in the CPU's caches: every input's
piece is widened straight from a memory map of its file into a buffer of its own (and its pages then
dropped from the process: the page cache keeps them), combined, rounded and copied into the output, so
memory holds the outputs in flight (and, for TIES, the entries near each threshold:
:mod:`mergebench.merging.plain_topk`) instead of float32 copies of every input.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from mergebench.merging.topk import topk_count

if TYPE_CHECKING:
    import numpy

    from mergebench.checkpoint import CheckpointReader
    from mergebench.merging.api import MergeContext, MergeMethod

CHUNK = 1 << 18
"""Entries per piece. Every numpy call releases the GIL and takes it back, which two busy workers turn into a
thread switch each: pieces of 256K entries (a few MB of buffers, in L3 rather than L2) keep those switches
rare beside the work (the README's "Speed and memory against mergekit" has the measurements)."""
WIDENED = ("BF16", "F32")


class NeedsTorch(Exception):
    """An input holds NaN/Inf or the arithmetic overflowed: the torch engine decides what happens (error or bits)."""


@dataclass(frozen=True)
class PlainForm:
    """θ = θ_pre + λ · combine(trim(τ_1), …, trim(τ_n)) in the shapes this module computes.

    ``density``: keep each τ_i's entries with |τ| ≥ its ``topk_count(n, density)``-th largest, per
    tensor (None: keep all); ``consensus``: TIES' sign election and disjoint mean, else a plain sum.
    """

    scaling: float
    density: float | None = None
    consensus: bool = False


def plain_form(method: "MergeMethod", context: "MergeContext", base: "CheckpointReader",
               experts: Mapping[str, "CheckpointReader"]) -> PlainForm | None:
    """The method's torch-free form if it has one and these checkpoints allow it exactly, else None."""
    form = getattr(method, "plain_form", lambda: None)()
    if form is None or context.device != "cpu" or base.pickled or any(r.pickled for r in experts.values()):
        return None
    from mergebench.checkpoint.writer import ELEMENT_BYTES

    for name in base.names():
        if base.dtype_name(name) not in ELEMENT_BYTES:
            return None
        if not method.merges(name):
            continue
        shape = base.shape(name)
        if base.dtype_name(name) not in WIDENED or len(shape) == 0 or 0 in shape:  # scalars, empty tensors: torch
            return None
        for reader in experts.values():  # other vocabularies need vocab_aligned: the torch engine's
            if name not in reader or reader.shape(name) != shape or reader.dtype_name(name) not in WIDENED:
                return None
    return form


def merged_bytes(form: PlainForm, method: "MergeMethod", base: "CheckpointReader",
                 experts: Mapping[str, "CheckpointReader"], workers: int) -> Iterator[tuple[str, "numpy.ndarray"]]:
    """(name, stored bytes as a numpy array) of every output tensor, in the base's order.

    Each tensor is cut into pieces that every worker takes from; two tensors are in progress at a
    time (one's serial steps — small tensors, TIES' thresholds — overlap the other's pieces), a few
    ahead of the caller, which writes them meanwhile."""
    from mergebench.merging.threads import ordered_map

    readers = list(experts.values())
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="mergebench-plain") as pool, \
            ThreadPoolExecutor(2, thread_name_prefix="mergebench-plain-tensor") as order:
        def one(name: str):
            if not method.merges(name):
                return _stored(base, name)
            return _Tensor(form, name, base, readers).merge(pool)

        names = base.names()
        yield from zip(names, ordered_map(order, one, names, 4))


def _stored(reader: "CheckpointReader", name: str) -> "numpy.ndarray":
    import numpy

    from mergebench.checkpoint.writer import ELEMENT_BYTES

    out = numpy.empty(math.prod(reader.shape(name)) * ELEMENT_BYTES[reader.dtype_name(name)], numpy.uint8)
    if len(out):
        reader.read_elements(name, 0, out)
    return out


class _Tensor:
    """One merged tensor, piece by piece (TIES: thresholds bracketed from a sample and settled in the same pass)."""

    def __init__(self, form: PlainForm, name: str, base: "CheckpointReader", experts: list["CheckpointReader"]) -> None:
        self.form, self.name, self.base, self.experts = form, name, base, experts
        self.numel = math.prod(base.shape(name))
        self.codes = [base.dtype_name(name), *(r.dtype_name(name) for r in experts)]
        self.thresholds: list[float | None] = [None] * len(experts)

    def merge(self, pool: ThreadPoolExecutor) -> "numpy.ndarray":
        import numpy

        run: Callable = _quiet(pool.map if self.numel >= 2 * CHUNK else map)
        ranges = [(start, min(start + CHUNK, self.numel)) for start in range(0, self.numel, CHUNK)]  # one piece a task
        out = numpy.empty(self.numel, numpy.uint16 if self.codes[0] == "BF16" else numpy.float32)
        if self.form.consensus and self.form.density is not None and self.form.density < 1:
            from mergebench.merging import plain_topk

            k = topk_count(self.numel, self.form.density)
            brackets = plain_topk.brackets(self, k, run)
            if brackets is None:
                self.thresholds = plain_topk.thresholds(self, k, run)
            else:  # merged at once, the entries near a threshold merged again once it is known
                records = list(run(lambda bounds: self.merge_range(*bounds, out, brackets), ranges))
                if plain_topk.finish_speculation(self, k, brackets, records, out):
                    return out.view(numpy.uint8)
        list(run(lambda bounds: self.merge_range(*bounds, out), ranges))
        return out.view(numpy.uint8)

    # -- reading ---------------------------------------------------------------------------
    def read(self, index: int, start: int, scratch: "_Scratch") -> "numpy.ndarray":
        """Input ``index`` (0 the base, then the experts) at entries ``start:start+len``, widened to float32 in ``scratch``."""
        import numpy

        reader = self.base if index == 0 else self.experts[index - 1]
        m = scratch.length
        wide = scratch.floats[index][:m]
        if self.codes[index] == "F32":
            numpy.copyto(wide, reader.mapped_elements(self.name, start, m, numpy.float32))
        else:
            stored = reader.mapped_elements(self.name, start, m, numpy.uint16)
            numpy.left_shift(stored, 16, out=wide.view(numpy.uint32), dtype=numpy.uint32)
        return wide

    def unmap(self, start: int, stop: int) -> None:
        """Drop every input's pages under entries ``start:stop`` (read): RSS holds the pieces in flight, not the inputs."""
        for reader in [self.base, *self.experts]:
            reader.unmap_elements(self.name, start, stop - start)

    def task_vector(self, index: int, start: int, scratch: "_Scratch", base: "numpy.ndarray") -> "numpy.ndarray":
        import numpy

        tau = self.read(index + 1, start, scratch)
        return numpy.subtract(tau, base, out=tau)

    # -- TIES' threshold ----------------------------------------------------------------
    def magnitudes(self, start: int, length: int, scratch: "_Scratch") -> Iterator["numpy.ndarray"]:
        """|τ_i| of every expert i at entries ``start:start+length`` (each yielded array is reused for the next)."""
        import numpy

        scratch.length = length
        base = self.read(0, start, scratch)
        for index in range(len(self.experts)):
            tau = self.task_vector(index, start, scratch, base)
            yield numpy.abs(tau, out=tau)

    # -- the merge -------------------------------------------------------------------------
    def merge_range(self, start: int, stop: int, out: "numpy.ndarray", brackets=None):
        """Merge entries ``start:stop`` into ``out``. With TIES' ``brackets`` (low, high) per expert instead of its
        thresholds, |τ| > high is kept and |τ| < low dropped, and what lies between is recorded and returned."""
        from mergebench.merging.plain_topk import Record

        scratch = _scratch(len(self.experts) + 1)
        record = Record(len(self.experts)) if brackets is not None else None
        for begin in range(start, stop, CHUNK):
            scratch.length = min(CHUNK, stop - begin)
            base = self.read(0, begin, scratch)
            taus = [self.task_vector(i, begin, scratch, base) for i in range(len(self.experts))]
            if record is not None:
                delta = _elect_and_merge(_trim_by(taus, record.add(begin, base, taus, brackets, scratch)), scratch)
            elif self.form.consensus:
                delta = _elect_and_merge(_trim(taus, self.thresholds, scratch), scratch)
            else:
                delta = _summed(taus)
            _finish(delta, base, self.form.scaling, out[begin:begin + scratch.length], scratch, self.name)
        self.unmap(start, stop)
        return record


def _quiet(run: Callable) -> Callable:
    """``run(fn, items)`` with numpy's overflow warnings off in ``fn`` (an overflow raises NeedsTorch instead)."""
    import numpy

    def quietly(fn, items):
        def call(item):
            with numpy.errstate(all="ignore"):
                return fn(item)

        return run(call, items)

    return quietly


_local = threading.local()


def _scratch(inputs: int) -> "_Scratch":
    """This worker thread's buffers for ``inputs`` inputs of a piece (made once, reused for every piece)."""
    found = getattr(_local, "scratch", None)
    if found is None or len(found.floats) != inputs or len(found.extra[0]) != CHUNK:
        found = _local.scratch = _Scratch(inputs)
    found.length = CHUNK
    return found


class _Scratch:
    """Per-worker buffers of one piece: the widened values of each input, and temporaries."""

    def __init__(self, inputs: int, size: int = 0) -> None:
        import numpy

        self.length = size = size or CHUNK
        self.floats = [numpy.empty(size, numpy.float32) for _ in range(inputs)]
        self.extra = [numpy.empty(size, numpy.float32) for _ in range(3)]
        self.near = [numpy.empty(size, numpy.bool_) for _ in range(2)]


def _summed(taus: list["numpy.ndarray"]) -> "numpy.ndarray":
    """τ_1 + τ_2 + … added one at a time into τ_1 (merging.tensors.summed)."""
    total = taus[0]
    for tau in taus[1:]:
        total += tau
    return total


def _trim(taus: list["numpy.ndarray"], thresholds: list[float | None], scratch: _Scratch) -> list["numpy.ndarray"]:
    """Each τ where |τ| >= its threshold, ±0 elsewhere, in place (``keep_above``; a threshold of 0 or None keeps all).

    ``keep_above`` drops to +0, τ·0 gives −0 for a negative τ; the merged bytes are the same: a −0 changes no sum
    that holds a nonzero term (x + −0 = x, and a cancellation's +0 absorbs it), and where every trimmed τ is ±0
    nothing agrees with the elected sign, so :func:`_elect_and_merge` writes +0 there whichever sign is elected."""
    import numpy

    magnitude = scratch.extra[0][:scratch.length]
    for tau, threshold in zip(taus, thresholds):
        if threshold:
            numpy.multiply(tau, numpy.greater_equal(numpy.abs(tau, out=magnitude), numpy.float32(threshold),
                                                    out=magnitude), out=tau)
    return taus


def _trim_by(taus: list["numpy.ndarray"], keeps: list["numpy.ndarray"]) -> list["numpy.ndarray"]:
    """Each τ where its mask is set, ±0 elsewhere, in place."""
    import numpy

    for tau, keep in zip(taus, keeps):
        numpy.multiply(tau, keep, out=tau)
    return taus


def _elect_and_merge(taus: list["numpy.ndarray"], scratch: _Scratch) -> "numpy.ndarray":
    """TIES' election and disjoint mean of trimmed τ, as ``summed``, ``elected_sign`` and ``disjoint_merge`` compute them."""
    import numpy

    m = scratch.length
    magnitude, elected, count = (buffer[:m] for buffer in scratch.extra)
    if len(taus) == 1:
        numpy.copyto(elected, taus[0])
    else:
        numpy.add(taus[0], taus[1], out=elected)
    for tau in taus[2:]:
        elected += tau
    sign = elected.view(numpy.uint32)  # Σ's sign bit: times copysign(1, Σ) is this bit flipped in, exactly
    sign &= numpy.uint32(0x80000000)
    # the agreeing are counted in small integers (a float32 count costs a cast and four times the memory per τ)
    narrow = len(taus) < 256
    counted = count.view(numpy.uint8 if narrow else numpy.uint32)[:m]
    agrees = magnitude.view(numpy.bool_)[:m]
    kept = None
    for tau in taus:  # relu(s·δ) is |δ| where δ agrees with s; [relu(s·δ) > 0] counts the agreeing (torch: its sign)
        flipped = tau.view(numpy.uint32)
        flipped ^= sign
        agreeing = numpy.maximum(tau, 0, out=tau)
        if kept is None:
            kept = agreeing
            if narrow:  # the first count is the comparison itself, a byte of 0 or 1
                numpy.greater(agreeing, 0, out=counted.view(numpy.bool_))
            else:
                counted[:] = numpy.greater(agreeing, 0, out=agrees)
            continue
        kept += agreeing
        counted += numpy.greater(agreeing, 0, out=agrees)
    numpy.maximum(counted, 1, out=counted)
    kept /= counted  # float32 by an exact small integer: the same quotient as torch's float32 count
    merged = kept.view(numpy.uint32)
    merged ^= sign
    kept += numpy.float32(0.0)
    return kept


def _finish(delta: "numpy.ndarray", base: "numpy.ndarray", scaling: float, out: "numpy.ndarray", scratch: _Scratch,
            name: str) -> None:
    """out = stored(base + λ·δ) as ``scaled_sum`` and ``.to(dtype)`` compute it; NaN/Inf anywhere: :class:`NeedsTorch`."""
    import numpy

    if not (isinstance(scaling, (int, float)) and scaling == 1):
        numpy.multiply(delta, numpy.float32(scaling), out=delta)
    numpy.add(delta, base, out=delta)
    if not math.isfinite(float(numpy.sum(delta, dtype=numpy.float32))):
        raise NeedsTorch(name)  # an input's NaN/Inf stays non-finite through every step above
    if out.dtype == numpy.float32:
        out[:] = delta
        return
    bits = delta.view(numpy.uint32)
    rounded = scratch.extra[0][:len(delta)].view(numpy.uint32)  # torch's round to nearest even on the bits
    numpy.right_shift(bits, 16, out=rounded)
    numpy.bitwise_and(rounded, 1, out=rounded)
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    numpy.copyto(out, rounded, casting="unsafe")
