"""Exact magnitude thresholds (the k-th largest |x|) by radix select over float32 bits.

Top-k sparsification (TIES, Breadcrumbs, Dataless Localize-and-Stitch) needs the k-th largest
magnitude of a task vector. ``torch.kthvalue``/``topk``/``argsort`` cost a sort-like pass per
call, which made top-k the dominant cost of a TIES merge (mergekit sorts every tensor). Here:

* The bit pattern of a non-negative float32, read as an integer, orders like the float. So
  the k-th largest |x| is found digit by digit: a histogram (``bincount``) of the high 15 bits
  (sign dropped) finds the bin holding the k-th element and its rank inside the bin; a
  histogram of the low 16 bits *of the elements in that bin only* pins the exact value. Two
  cheap passes, no sort, and the result is bit-exact.
* The high 16 bits of each float32 are, on a little-endian machine, the odd ``int16`` words of
  the same buffer, so the first histogram needs no shift: ``x.view(int16)[1::2] & 0x7FFF``.
* **Global** top-k (the study's choice: one threshold per expert over the whole model) streams:
  :class:`MagnitudeSelector` accumulates the high-bit histograms of every tensor in one pass,
  then the low-bit histograms of the boundary bins in a second pass. Memory is two histograms
  per requested rank, never the task vectors.

Ties: every element with ``|x| >= threshold`` is kept, as the TIES reference code does with
``kthvalue``; with continuous values that is exactly k elements, with repeated magnitudes it
may be a few more.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

HIGH_BINS = 1 << 15  # high 16 bits with the sign bit dropped
LOW_BINS = 1 << 16


def _words(x: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(high 15 bits as int16 view, low 16 bits as int16 view) of |x| for float32 ``x``."""
    import torch

    flat = x.detach().reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    flat = flat.contiguous()
    if sys.byteorder == "little":
        halves = flat.view(torch.int16)
        return halves[1::2] & 0x7FFF, halves[0::2]
    bits = flat.view(torch.int32)
    return ((bits >> 16) & 0x7FFF).to(torch.int16), (bits & 0xFFFF).to(torch.int16)


def _locate(histogram: "torch.Tensor", rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th largest element (1-based) and its rank inside that bin."""
    import numpy

    from_top = numpy.cumsum(histogram.cpu().numpy()[::-1])  # one small pass; torch's flip copies first
    position = int(numpy.searchsorted(from_top, rank))
    above = int(from_top[position - 1]) if position > 0 else 0
    return histogram.numel() - 1 - position, rank - above


def _bits_to_float(high: int, low: int) -> float:
    import struct

    return struct.unpack("<f", struct.pack("<I", (high << 16) | low))[0]


class MagnitudeSelector:
    """Exact k-th largest magnitudes over a stream of tensors, in two passes.

    Example::

        selector = MagnitudeSelector([k])
        for t in tensors: selector.add(t)        # pass 1
        for t in tensors: selector.refine(t)     # pass 2 (skippable if ``selector.done``)
        threshold = selector.thresholds()[0]     # keep |x| >= threshold

    ``ranks`` are 1-based (1 = the largest); a rank of 0 gives ``inf`` (keep nothing) and a
    rank past the number of elements gives 0.0 (keep everything).
    """

    def __init__(self, ranks: Sequence[int]) -> None:
        import torch

        self.ranks = [int(r) for r in ranks]
        self.count = 0
        self._high = torch.zeros(HIGH_BINS, dtype=torch.int64)  # on the CPU: histograms are moved here
        self._bins: list[tuple[int, int]] | None = None
        self._low: dict[int, "torch.Tensor"] = {}

    # -- pass 1 --------------------------------------------------------------------------
    @staticmethod
    def histogram(x: "torch.Tensor") -> "torch.Tensor":
        """Histogram of the high bits of |x| (pure: safe to compute on any thread)."""
        import torch

        high, _ = _words(x)
        return torch.bincount(high, minlength=HIGH_BINS)

    def add_histogram(self, histogram: "torch.Tensor") -> None:
        if self._bins is not None:
            raise RuntimeError("pass 1 is over once pass 2 has started: start a new selector")
        histogram = histogram.cpu()
        self._high += histogram
        self.count += int(histogram.sum())

    def add(self, x: "torch.Tensor") -> None:
        self.add_histogram(self.histogram(x))

    def _plan(self) -> list[tuple[int, int]]:
        if self._bins is None:
            bins = []
            for rank in self.ranks:
                if rank <= 0 or rank > self.count:
                    bins.append((-1, 0))
                else:
                    bins.append(_locate(self._high, rank))
            self._bins = bins
        return self._bins

    # -- pass 2 --------------------------------------------------------------------------
    def low_histograms(self, x: "torch.Tensor") -> dict[int, "torch.Tensor"]:
        """Histograms of the low bits of the entries of |x| in the boundary bins (pure, like :meth:`histogram`)."""
        import torch

        wanted = sorted({b for b, _ in self._plan() if b >= 0})
        if not wanted:
            return {}
        high, low = _words(x)
        found = {}
        for b in wanted:
            selected = low[high == b]
            if selected.numel():
                found[b] = torch.bincount(selected.to(torch.int32) & 0xFFFF, minlength=LOW_BINS)
        return found

    def add_low_histograms(self, histograms: dict[int, "torch.Tensor"]) -> None:
        for b, counts in histograms.items():
            counts = counts.cpu()
            self._low[b] = self._low[b] + counts if b in self._low else counts

    def refine(self, x: "torch.Tensor") -> None:
        self.add_low_histograms(self.low_histograms(x))

    def thresholds(self) -> list[float]:
        out = []
        for rank, (b, inner) in zip(self.ranks, self._plan()):
            if b < 0:
                out.append(float("inf") if rank <= 0 else 0.0)
                continue
            low = self._low.get(b)
            if low is None or int(low.sum()) != int(self._high[b]):
                raise RuntimeError("refine() must see every tensor add() saw before thresholds() is asked")
            low_bin, _ = _locate(low, inner)
            out.append(_bits_to_float(b, low_bin))
        return out


def kth_largest_abs(x: "torch.Tensor", k: int) -> float:
    """The k-th largest |x| of one tensor (1-based), exact; the one-tensor case of :class:`MagnitudeSelector`.

    The high words are computed once and the second histogram only sees the boundary bin's
    entries, so this costs about one elementwise pass and one ``bincount`` over ``x``.
    """
    import torch

    n = x.numel()
    if k <= 0:
        return float("inf")
    if k > n:
        return 0.0
    flat = x.detach().reshape(-1).float().contiguous()
    high, _ = _words(flat)
    b, inner = _locate(torch.bincount(high, minlength=HIGH_BINS), k)
    candidates = flat[high == b].view(torch.int32) & 0xFFFF
    low_bin, _ = _locate(torch.bincount(candidates, minlength=LOW_BINS), inner)
    return _bits_to_float(b, low_bin)


def topk_count(numel: int, density: float) -> int:
    """How many entries a density keeps: ``int(density * n)``, at least one when density > 0 (as mergekit)."""
    if density >= 1:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))
