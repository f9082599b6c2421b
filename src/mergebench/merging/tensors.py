"""The arithmetic merge methods share: task vectors, running sums and means, and ``base + λ·Δ``.

Why one module: the merge stage (:meth:`MergeMethod.merge_tensor`), the search's in-memory grid
and its shared decoding all write a point's weights as ``base + λ·Δ``, and a point chosen by the
search must equal its merged checkpoint bit for bit. One function, :func:`scaled_sum`, writes
them all. The running sums keep one expert in float32 at a time when the experts are streamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    import torch


def task_vectors(experts: Sequence["torch.Tensor"], base: "torch.Tensor") -> Iterator["torch.Tensor"]:
    """τ_i = expert_i − base, one fresh tensor at a time.

    Computed from the stored dtype when the engine's lazy sequence offers it (``task_vector``),
    which saves a float32 copy of every expert; the values are the same either way.
    """
    direct = getattr(experts, "task_vector", None)
    for index in range(len(experts)):
        yield direct(index) if direct is not None else experts[index] - base


def summed(tensors: Iterable["torch.Tensor"], *, owned: bool = False) -> "torch.Tensor":
    """Σ of ``tensors``, added one at a time into the first.

    ``owned``: the first tensor is the caller's to overwrite (a fresh task vector); otherwise it
    is copied first, since an expert handed out by an in-memory source may be the stored tensor.
    """
    iterator = iter(tensors)
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("nothing to sum") from None
    total = first if owned else first.clone()
    for tensor in iterator:
        total.add_(tensor)
    return total


def averaged(tensors: Iterable["torch.Tensor"], *, owned: bool = False) -> "torch.Tensor":
    """The mean of ``tensors`` (a running sum divided by their count; see :func:`summed`)."""
    count = 0

    def counted():
        nonlocal count
        for tensor in tensors:
            count += 1
            yield tensor

    total = summed(counted(), owned=owned)
    return total / count


def _is_one(scaling) -> bool:
    return isinstance(scaling, (int, float)) and scaling == 1


def scaled_sum(base: "torch.Tensor", delta: "torch.Tensor", scaling, *, out: "torch.Tensor | None" = None
               ) -> "torch.Tensor":
    """``base + scaling · delta``: every merged weight of a ``base + λ·Δ`` method, written one way.

    ``scaling`` is a number or a tensor that broadcasts against ``delta`` (one λ per row).
    ``out`` receives the result without a temporary; it may be ``delta`` itself (a fresh merged
    task vector scaled in place). The product is rounded before the sum in every form, so the
    three callers agree bit for bit.

    A number λ on float32 (or float64) tensors takes one pass, ``addcmul``'s ``base + (λ·δ)·1``:
    ``λ·δ`` is rounded as an operand of the product by 1, which is exact, so the sum sees the
    rounded product whether or not the kernel fuses the last multiply and add, the same bits as a
    product then a sum in two passes. One pass reads ``δ`` and ``base`` and writes the result
    once, where two passes move five tensors' worth of memory (64 against 99 ms for the embedded
    model's 134M weights, the search writes one point's weights this way every round).
    """
    import torch

    if _is_one(scaling):
        return base + delta if out is None else torch.add(delta, base, out=out)
    # bfloat16 and float16 kernels compute in float32 and round once: their one pass would differ
    if isinstance(scaling, (int, float)) and delta.dtype in (torch.float32, torch.float64) \
            and base.dtype == delta.dtype and (out is None or out.dtype == delta.dtype):
        return torch.addcmul(base, delta, torch.ones((), dtype=delta.dtype, device=delta.device), value=scaling, out=out)
    if out is None:
        return base + scaling * delta
    return torch.mul(delta, scaling, out=out).add_(base)


def elected_sign(total: "torch.Tensor") -> "torch.Tensor":
    """TIES' elected sign as ±1 from the summed trimmed task vectors, + where the sum is 0.

    ``copysign`` is one pass where ``where(total >= 0, 1, -1)`` builds a boolean mask first; the two
    agree because a sum accumulated from zeros (:func:`disjoint_merge`'s callers do) is never −0.
    """
    import torch

    return torch.copysign(torch.ones((), dtype=total.dtype, device=total.device), total)


def disjoint_merge(deltas: Iterable["torch.Tensor"], elected: "torch.Tensor", *, normalize: bool) -> "torch.Tensor":
    """TIES' disjoint merge: Σ of the entries whose sign is ``elected`` (±1), divided by how many agree if ``normalize``.

    Consumes ``deltas`` (overwritten in place). Computed without boolean masks: ``relu(s·δ)`` is
    ``|δ|`` where δ agrees with the sign s and 0 elsewhere, and ``sign`` of it counts the agreeing.
    Multiplying by ±1 is exact and rounding is symmetric, so s·Σ relu(s·δ_i) equals the masked sum
    Σ δ_i·[sign δ_i = s] bit for bit, summed in the same order; the final ``+ 0.0`` turns the −0
    of an entry where nothing agrees into the +0 the masked sum gives. The first δ becomes the sum.
    """
    kept = count = None
    for delta in deltas:
        agreeing = delta.mul_(elected).relu_()
        if kept is None:  # 0 + x = x (up to the sign of 0, which the final + 0.0 settles): no zeros to fill
            kept, count = agreeing, (agreeing.sign() if normalize else None)
            continue
        kept.add_(agreeing)
        if count is not None:
            count.add_(agreeing.sign_())
    if kept is None:
        raise ValueError("nothing to merge")
    if count is not None:
        kept.div_(count.clamp_(min=1))
    return kept.mul_(elected).add_(0.0)
