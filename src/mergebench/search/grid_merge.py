"""Validation-time merging: a grid of hyperparameters, inputs read once, no checkpoint written.

The hyperparameter search of the study (Table 7: 30 points for TIES and DARE) spends most of
its time merging and evaluating. This module makes the merging part cheap:

* the base and experts are read **once** into memory (in their stored dtype; each tensor is
  cast to float32 only while it is merged), checked for compatibility and NaN/Inf once;
* grid points that differ only in ``scaling`` share one merged task vector for methods with
  ``scales_delta`` (Task Arithmetic, TIES, DARE, DELLA, Breadcrumbs, Consensus, TSV, Iso-C/CTS,
  Dataless L&S): thresholds, masks, sign elections and SVDs are computed once per group and
  each λ costs one ``base + λ·delta`` per tensor;
* results are state dicts (name → tensor in the base's dtype, or ``dtype``), ready for
  ``model.load_state_dict(state)``; nothing is written to disk.

Example::

    from mergebench.search.grid_merge import merge_grid
    points = [{"density": d, "scaling": s} for d in (0.1, 0.2, 0.3) for s in (0.5, 1.0)]
    for params, state in merge_grid(spec, points, base_dir, {"math": m, "coding": c}):
        model.load_state_dict(state)
        score = evaluate(model)

Each state dict equals, tensor for tensor, the checkpoint :func:`merge_checkpoints` writes for
the same point. Memory: the inputs, plus one merged task vector (float32) per group.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from mergebench.checkpoint import vocab_aligned
from mergebench.merging.api import MergeContext, TensorInputs
from mergebench.merging.engine import build_method, check_finite, open_inputs
from mergebench.merging.tensors import scaled_sum
from mergebench.merging.threads import merge_threads, worker_count
from mergebench.specs import MethodSpec

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    import torch


class InMemoryInputs(TensorInputs):
    """Base and experts held in memory (stored dtype), handed out as float32 per tensor."""

    def __init__(self, base: Mapping[str, "torch.Tensor"], experts: Sequence[Mapping[str, "torch.Tensor"]],
                 names: list[str], device: str = "cpu", *, pool: ThreadPoolExecutor | None = None, window: int = 1) -> None:
        super().__init__(names, pool=pool, window=window)
        self.base, self.experts, self.device = base, experts, device

    def numel(self, name: str) -> int:
        return self.base[name].numel()

    def available(self) -> list[str]:
        return list(self.base)

    def tensors(self, name: str) -> tuple["torch.Tensor", list["torch.Tensor"]]:
        import torch

        return (self.base[name].to(self.device, torch.float32),
                [e[name].to(self.device, torch.float32) for e in self.experts])


def load_inputs(base_dir: Path, expert_dirs: Mapping[str, Path], *, allow_pickle: bool = False
                ) -> tuple[dict[str, "torch.Tensor"], list[dict[str, "torch.Tensor"]]]:
    """Every tensor of the base and the (vocabulary-aligned, finite-checked) experts, read once."""
    base_reader, readers = open_inputs(base_dir, expert_dirs, allow_pickle=allow_pickle)
    base = {name: base_reader.get(name) for name in base_reader.names()}
    experts = []
    for label, reader in readers.items():
        tensors = {}
        for name in base:
            tensor = vocab_aligned(base[name], reader.get(name))
            if tensor.is_floating_point():
                check_finite(tensor, label, name, reader.directory)
            tensors[name] = tensor
        experts.append(tensors)
    return base, experts


class GridMerger:
    """Merges grid points of one method on inputs read once, keeping each group's task vector.

    Successive halving asks for a few points per round; keeping the merged task vector of each
    group (points equal but for ``scaling``) means a later round pays one ``base + λ·delta`` per
    tensor instead of re-running thresholds and sign elections.
    """

    def __init__(self, spec: MethodSpec, base_dir: Path, expert_dirs: Mapping[str, Path], *,
                 context: MergeContext | None = None, dtype: "torch.dtype | None" = None,
                 allow_pickle: bool = False) -> None:
        self.spec = spec
        self.context = replace(context or MergeContext(), domains=tuple(expert_dirs))
        self.n_experts = len(expert_dirs)
        self.dtype = dtype
        self._base_dir, self._expert_dirs, self._allow_pickle = base_dir, dict(expert_dirs), allow_pickle
        self._deltas: dict[str, tuple[set[str], dict[str, "torch.Tensor"]]] = {}

    @cached_property
    def _loaded(self) -> tuple[dict[str, "torch.Tensor"], list[dict[str, "torch.Tensor"]]]:
        """Read on first use, after the first points were validated: a bad point fails before any read."""
        return load_inputs(self._base_dir, self._expert_dirs, allow_pickle=self._allow_pickle)

    @property
    def base(self) -> dict[str, "torch.Tensor"]:
        return self._loaded[0]

    @property
    def experts(self) -> list[dict[str, "torch.Tensor"]]:
        return self._loaded[1]

    def merge(self, points: Iterable[Mapping[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, "torch.Tensor"]]]:
        """Yield ``(resolved params, state dict)`` for every point, grouped by everything but ``scaling``.

        Every point is validated before anything is read or merged; a bad one raises a UsageError
        first. The merge threads (torch at one intra-op thread meanwhile) are closed before each
        yield, so whatever the caller does with a state dict runs on every core.
        """
        resolved = self._validated(points)
        groups: dict[str, list[dict[str, Any]]] = {}
        for params in resolved:
            groups.setdefault(_group_key(params), []).append(params)
        for key, members in groups.items():
            yield from self._merge_group(key, members)

    def scaled(self, points: Iterable[Mapping[str, Any]]) -> list[tuple[dict[str, Any], str, float]] | None:
        """``(resolved params, group, scaling)`` per point when the method's merges are ``base + scaling · delta``.

        The merged task vector of every group is computed here (once; see :meth:`delta`), so a
        caller can evaluate the points without materializing them. ``None`` for other methods.
        """
        resolved = self._validated(points)
        if not resolved or not type(build_method(self.spec, resolved[0], self.context, self.n_experts)).scales_delta:
            return None
        self._ensure_deltas({_group_key(params): params for params in resolved})
        return [(params, _group_key(params), params.get("scaling", 1.0)) for params in resolved]

    def forget(self, points: Iterable[Mapping[str, Any]]) -> list[str]:
        """Drop the merged task vectors of ``points``' groups (a finished search stage's); returns their groups."""
        groups = {_group_key(self.spec.resolve_params(point)) for point in points}
        for group in groups:
            self._deltas.pop(group, None)
        return sorted(groups)

    def delta(self, group: str) -> dict[str, "torch.Tensor"]:
        """The unscaled merged task vector (float32) of a group :meth:`scaled` returned, by tensor name."""
        return self._deltas[group][1]

    def _validated(self, points: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        resolved = [self.spec.resolve_params(point) for point in points]
        for params in resolved:  # expert count, statistics, parameter checks of the method itself
            build_method(self.spec, params, self.context, self.n_experts)
        return resolved

    def _out(self, name: str, tensor: "torch.Tensor") -> "torch.Tensor":
        return tensor.to(self.dtype or self.base[name].dtype)

    def _tensor_inputs(self, method, pool) -> InMemoryInputs:
        names = [n for n in self.base if method.merges(n)]
        return InMemoryInputs(self.base, self.experts, names, self.context.device, pool=pool,
                            window=worker_count(self.context) + 1)

    def _ensure_deltas(self, groups: Mapping[str, Mapping[str, Any]]) -> None:
        """The merged task vector of every group not computed yet, in one pass over the inputs.

        The groups' methods are prepared together (:meth:`MergeMethod.prepare_all`: TIES finds
        the thresholds of every density from one pair of histogram passes) and merged tensor by
        tensor side by side, so the inputs are read once per round, not once per group.
        """
        import torch

        missing = {key: build_method(self.spec, dict(params), self.context, self.n_experts)
                   for key, params in groups.items() if key not in self._deltas}
        if not missing:
            return
        methods = list(missing.values())
        with merge_threads(self.context) as pool:
            inputs = self._tensor_inputs(methods[0], pool)
            if any(self._tensor_inputs(m, pool).names() != inputs.names() for m in methods[1:]):
                raise ValueError(f"{self.spec.name}: configurations of one search merge different tensors")
            type(methods[0]).prepare_all(methods, inputs)
            with torch.inference_mode():
                merged = list(inputs.map(lambda n, b, e: [m.merge_delta(n, b, e) for m in methods]))
        names = inputs.names()
        for i, key in enumerate(missing):
            self._deltas[key] = (set(names), {name: row[i] for name, row in zip(names, merged)})

    def _merge_group(self, key, members):
        import torch

        first = build_method(self.spec, members[0], self.context, self.n_experts)
        if type(first).scales_delta:
            self._ensure_deltas({key: members[0]})
            merged_set, deltas = self._deltas[key]
            for params in members:
                scaling = params.get("scaling", 1.0)
                state = {}
                for name, tensor in self.base.items():
                    if name not in merged_set:
                        state[name] = self._out(name, tensor)
                        continue
                    state[name] = self._out(name, scaled_sum(tensor.to(self.context.device, torch.float32),
                                                             deltas[name], scaling))
                yield dict(params), state
            return
        for params in members:
            method = build_method(self.spec, params, self.context, self.n_experts)
            with merge_threads(self.context) as pool:
                inputs = self._tensor_inputs(method, pool)
                method.prepare(inputs)
                merged_set = set(inputs.names())
                with torch.inference_mode():
                    merged = dict(zip(inputs.names(), inputs.map(lambda n, b, e, m=method: m.merge_tensor(n, b, e))))
            yield dict(params), {name: self._out(name, merged[name]) if name in merged_set else self._out(name, t)
                                 for name, t in self.base.items()}


def _group_key(params: Mapping[str, Any]) -> str:
    return repr(sorted((k, v) for k, v in params.items() if k != "scaling"))


def merge_grid(
    spec: MethodSpec,
    points: Iterable[Mapping[str, Any]],
    base_dir: Path,
    expert_dirs: Mapping[str, Path],
    *,
    context: MergeContext | None = None,
    dtype: "torch.dtype | None" = None,
    allow_pickle: bool = False,
) -> Iterator[tuple[dict[str, Any], dict[str, "torch.Tensor"]]]:
    """Yield ``(resolved params, state dict)`` for every grid point (grouped; see :class:`GridMerger`).

    Every point is validated before anything is read; a bad one raises a UsageError first.
    """
    yield from GridMerger(spec, base_dir, expert_dirs, context=context, dtype=dtype, allow_pickle=allow_pickle).merge(points)
