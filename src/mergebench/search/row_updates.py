"""How one shared forward pass gives every row the output of its own variant ``base + λ·Δ``.

Every layer whose output is affine in its own parameters (linear, embedding) obeys
``f(x; θ_B + λΔ) = f(x; θ_B) + λ·(f(x; Δ) − f(x; 0))``, so a forward hook on each layer that Δ
touches turns the base's output into each row's: :class:`RowPlan` knows which variant each row
belongs to, and the layer's :class:`LayerUpdate` adds what that variant changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence

from mergebench.merging.tensors import scaled_sum

if TYPE_CHECKING:
    import torch

    from mergebench.search.shared_decoding import Variant

Segment = tuple[Hashable, int, int, "torch.Tensor"]
"""``(group, start, stop, per-row scales)``: rows ``[start, stop)`` of the pass belong to variants of ``group``."""

Groups = Mapping[Hashable, Mapping[str, "torch.Tensor"]]
"""The merged task vectors of the groups with a delta of the hooked layer: group, then parameter name."""


class RowPlan:
    """Which variant each row of the current forward pass belongs to, as contiguous row slices.

    Rows arrive grouped (see :meth:`DeltaBatch._shared_generate`), so each group is a slice
    ``[start, stop)`` with a per-row scale vector: a layer's update is computed on that slice's
    rows only and added in place through a view, no gather or scatter of rows.
    """

    def __init__(self, variant_of: Callable[[Any], "Variant"]) -> None:
        self.variant_of = variant_of
        self.segments: list[Segment] = []
        self.inside = False  # computing a layer's update calls the layer again (generic layers): no hook then

    def select(self, requests: Sequence[Any]) -> None:
        """The row listener of a shared generation: the rows of the next forward pass, in order."""
        import torch

        segments: list[tuple[Hashable, int, list[float]]] = []  # (group, start, per-row scales)
        for row, request in enumerate(requests):
            variant = self.variant_of(request)
            if not segments or segments[-1][0] != variant.group:
                segments.append((variant.group, row, []))
            segments[-1][2].append(variant.scale)
        self.segments = [(group, start, start + len(scales), torch.tensor(scales)) for group, start, scales in segments
                         if any(scales)]

    def add(self, out, args, update: "LayerUpdate", groups: Groups):
        """``out`` made each row's variant's output, for the groups with a delta of this layer."""
        if self.inside:
            return out
        self.inside = True
        try:
            return update.apply(args, self.segments, groups, out)
        finally:
            self.inside = False


def update_for(module, touched: Mapping[str, str]) -> "LayerUpdate":
    """The update of a layer, by its kind (``touched``: its parameters Δ changes, attribute → name).

    Subclasses of ``Linear`` may rescale their output, so only the plain layers take the
    dedicated paths; layers whose touched parameters are all vectors (norms) take a weight per
    row; anything else takes the generic update.
    """
    import torch

    if type(module).forward is torch.nn.Linear.forward:
        return LinearUpdate(module, touched)
    if type(module).forward is torch.nn.Embedding.forward:
        return EmbeddingUpdate(module, touched)
    if all(module._parameters[attr].dim() == 1 for attr in touched):
        return RowWeightedUpdate(module, touched)
    return GenericUpdate(module, touched)


def _per_row(scales, like):
    return scales.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class LayerUpdate(ABC):
    """Turns one layer's output on the base weights into each row's variant's output."""

    def __init__(self, module, touched: Mapping[str, str]) -> None:
        self.module, self.touched = module, touched

    @abstractmethod
    def apply(self, args: tuple, segments: Sequence[Segment], groups: Groups, out: "torch.Tensor") -> "torch.Tensor":
        """The layer's output for ``args`` with each segment's variant's weights (``out``: the base's, may be reused)."""


class SegmentUpdate(LayerUpdate):
    """Adds ``λ_row · (f(x; Δ) − f(x; 0))`` segment by segment, into the segment's rows of ``out``."""

    def apply(self, args, segments, groups, out):
        rows = out.shape[0]
        for group, start, stop, scales in segments:
            group_deltas = groups.get(group)
            if group_deltas is None:
                continue
            part = args if start == 0 and stop == rows else \
                tuple(a[start:stop] if hasattr(a, "shape") and a.dim() and a.shape[0] == rows else a for a in args)
            self.add_segment(part, group_deltas, scales, out[start:stop])
        return out

    @abstractmethod
    def add_segment(self, args: tuple, group: Mapping[str, "torch.Tensor"], scales: "torch.Tensor", out: "torch.Tensor") -> None:
        """Add the segment's update into ``out`` (a view of its rows) in place."""


class LinearUpdate(SegmentUpdate):
    """``λ_row · x Δ_Wᵀ (+ λ_row · Δ_b)``: ``f(x; 0)`` is 0."""

    def add_segment(self, args, group, scales, out):
        weight, bias = group.get(self.touched.get("weight")), group.get(self.touched.get("bias"))
        x = args[0]
        if weight is not None:  # scale the inputs: in <= out mostly; add into the rows' output in place
            rows = (x * _per_row(scales, x)).reshape(-1, x.shape[-1])
            out.view(-1, out.shape[-1]).addmm_(rows, weight.to(x.dtype).t())
        if bias is not None:
            out.add_(_per_row(scales, out) * bias.to(out.dtype))


class EmbeddingUpdate(SegmentUpdate):
    """``λ_row · Δ[ids]``: ``f(x; 0)`` is 0."""

    def add_segment(self, args, group, scales, out):
        import torch.nn.functional as F

        update = F.embedding(args[0], group[self.touched["weight"]]).to(self.module.weight.dtype)
        out.add_(update * _per_row(scales, update))


class GenericUpdate(SegmentUpdate):
    """``λ_row · (f(x; Δ) − f(x; 0))`` from two more calls of the layer, for any layer affine in its parameters."""

    def add_segment(self, args, group, scales, out):
        import torch
        from torch.func import functional_call

        module = self.module
        zeros = {attr: torch.zeros_like(p) for attr, p in module._parameters.items() if p is not None}
        swapped = {attr: group[name].to(zeros[attr].dtype) if name in group else zeros[attr]
                   for attr, name in self.touched.items()}
        update = functional_call(module, {**zeros, **swapped}, args) - functional_call(module, zeros, args)
        out.add_(update * _per_row(scales, update))


class RowWeightedUpdate(LayerUpdate):
    """A layer with vector parameters (a norm) called once with each row's own ``base + λ_row · Δ_row``.

    Exactly the variant's own weight, one call for all segments. A layer that does not take a
    parameter per row (``layer_norm`` checks its weight's shape) is :attr:`refused` on its first
    pass and takes the generic update from then on.
    """

    def __init__(self, module, touched: Mapping[str, str]) -> None:
        super().__init__(module, touched)
        self.refused = False
        self.fallback = GenericUpdate(module, touched)

    def apply(self, args, segments, groups, out):
        if not self.refused:
            result = self._with_row_weights(args, segments, groups, out)
            if result is not None:
                return result
            self.refused = True
        return self.fallback.apply(args, segments, groups, out)

    def _with_row_weights(self, args, segments, groups, out):
        """The layer called with parameters of shape ``rows × 1… × n``; ``None`` if it does not take them."""
        from torch.func import functional_call

        x, rows = args[0], out.shape[0]
        own = {}
        for attr, name in self.touched.items():
            base = self.module._parameters[attr].detach()
            weights = base.expand(rows, -1).clone()
            for group, start, stop, scales in segments:
                delta = groups.get(group, {}).get(name)
                if delta is not None:  # as materialize writes it: base + λ·Δ in float32, per row
                    weights[start:stop] = scaled_sum(base.to(delta.dtype), delta, scales.to(delta.dtype).view(-1, 1))
            own[attr] = weights.view(rows, *([1] * (x.dim() - 2)), -1)
        try:
            result = functional_call(self.module, own, args)
        except RuntimeError:  # a layer that checks its weight's shape (layer_norm)
            return None
        if result.shape != out.shape or result.dtype != out.dtype:
            return None
        return result
