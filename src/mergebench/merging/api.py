"""The interface a merge method implements.

A method is a class with one required function, :meth:`MergeMethod.merge_tensor`, called once
per tensor name with the base tensor and the experts' tensors (same shape, float32, on the
merge device; a sequence that may read each expert when it is indexed, so streaming over it
keeps one expert in float32 at a time). The engine streams tensors from the checkpoints, so a data-free method never
holds more than one tensor per input. Methods that need a view of the whole model before
merging (global top-k thresholds, statistics gathered from data) override
:meth:`MergeMethod.prepare`, which receives a :class:`TensorInputs` to stream over.

Task vectors (``expert - base``) exclude the embeddings and the LM head by default, as the
study does: for those tensors the engine keeps the base's values unless the method sets
``uses_task_vectors = False`` (Model Soup averages everything). ``exclude`` is configurable.

Optional hooks make methods fast to validate and possible to feed with data:

* A method whose output is ``base + scaling · delta`` sets ``scales_delta = True`` and
  implements :meth:`MergeMethod.merge_delta`; a grid of λ then reuses one delta
  (:mod:`mergebench.search.grid_merge`).
* :meth:`MergeMethod.prepare_all` prepares several configurations of a method at once (a
  search's densities): a method whose :meth:`~MergeMethod.prepare` passes could serve them all
  overrides it.
* A data-aware method owns a per-expert ``statistic``: it declares its name, version, the
  hyperparameters that shape it and the data it needs, and computes it in
  :meth:`MergeMethod.compute_statistic` from samples of the expert's training data. The harness
  (:mod:`mergebench.merging.statistics`) gathers the samples, caches each expert's statistic as an
  artifact and passes the folders in ``context.statistics[label]``; the engine refuses to run the
  method without one for every expert. A plugin adds a statistic this way, with no table to edit.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence, TypeVar

from mergebench.merging.tensors import scaled_sum
from mergebench.merging.threads import ordered_map
from mergebench.specs import DataNeed

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import torch

    from mergebench.merging.statistics import StatisticJob

DEFAULT_EXCLUDE: tuple[str, ...] = (
    r"(^|\.)embed_tokens\.",
    r"(^|\.)lm_head\.",
    r"(^|\.)wte\.",
    r"(^|\.)wpe\.",
)
"""Regexes of tensor names left out of task vectors (embeddings and output head)."""

T = TypeVar("T")


def task_vector_filter(exclude: Sequence[str]) -> Callable[[str], bool]:
    """``name -> bool``: whether a tensor belongs to the task vectors (matches none of ``exclude``)."""
    patterns = [re.compile(p) for p in exclude]
    return lambda name: not any(p.search(name) for p in patterns)


@dataclass(frozen=True)
class MergeContext:
    """Settings every method may read; all of them are part of the merged artifact's cache key."""

    seed: int = 0
    device: str = "cpu"
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    domains: tuple[str, ...] = ()
    statistics: Mapping[str, Any] = field(default_factory=dict)  # expert label -> statistics folder (data-aware methods)
    threads: int = 0  # tensors merged concurrently; 0 = one per CPU core


class TensorInputs(ABC):
    """Streams (name, base, experts) for :meth:`MergeMethod.prepare` passes.

    A source reads its tensors one way (from checkpoints, from memory) and shares the rest:
    :meth:`map` runs on the merge threads it was given (``pool``, at most ``window`` tensors in
    flight; none: in the calling thread).
    """

    def __init__(self, names: Sequence[str], *, pool: "ThreadPoolExecutor | None" = None, window: int = 1) -> None:
        self._names = list(names)
        self._pool, self._window = pool, window

    def names(self) -> list[str]:
        return list(self._names)

    def available(self) -> list[str]:
        """Every tensor the source holds, merged or not (sources override this; by default the merged ones).

        A method reproducing the study's code reads an untied ``lm_head`` that it does not merge
        (the study counts it in its global thresholds): it asks for it here.
        """
        return self.names()

    def with_names(self, names: Sequence[str]) -> "TensorInputs":
        """The same source streaming ``names`` instead (each must be in :meth:`available`)."""
        import copy

        view = copy.copy(self)
        view._names = list(names)
        return view

    @abstractmethod
    def tensors(self, name: str) -> tuple["torch.Tensor", Sequence["torch.Tensor"]]:
        """The base tensor and the experts' (vocabulary-aligned, float32, on the merge device).

        The experts may be a lazy sequence that reads each one when indexed: iterate it once
        per pass rather than indexing it repeatedly, and do not hold on to it.
        """

    def numel(self, name: str) -> int:
        """Number of entries of ``name`` (sources override this to answer without reading)."""
        return self.tensors(name)[0].numel()

    def map(self, fn: Callable[[str, "torch.Tensor", list["torch.Tensor"]], T]) -> Iterator[T]:
        """Yield ``fn(name, base, experts)`` for every tensor, in name order (on every core when given a pool).

        ``fn`` must not mutate shared state: return a value and combine the results as they come.
        """
        return ordered_map(self._pool, lambda name: fn(name, *self.tensors(name)), self._names, self._window)

    def __iter__(self) -> Iterator[tuple[str, "torch.Tensor", list["torch.Tensor"]]]:
        for name in self.names():
            base, experts = self.tensors(name)
            yield name, base, experts


class MergeMethod:
    """Base class of merge methods; see the module docstring for the protocol."""

    uses_task_vectors: ClassVar[bool] = True
    scales_delta: ClassVar[bool] = False
    """True when ``merge_tensor == base + params["scaling"] * merge_delta``: grids over λ reuse the delta."""
    statistic: ClassVar[str | None] = None
    """Name of the per-expert statistic a data-aware method computes (:meth:`compute_statistic`) and
    reads from ``context.statistics``. Name and version identify the algorithm in its cache key, so
    methods that share a statistic share its artifacts."""
    statistic_version: ClassVar[str] = "1"
    """Bump it when :meth:`compute_statistic` writes something else: cached statistics are then rebuilt."""
    statistic_keys: ClassVar[tuple[str, ...]] = ("samples",)
    """Hyperparameters that shape the statistic (part of its cache key); the others only change the merge,
    so a search over them reuses one statistic."""
    statistic_relative_to_base: ClassVar[bool] = False
    """True when the statistic depends on the base too (Localize-and-Stitch's masks are trained on
    θ_pre + σ(S) ⊙ τ): the base's key then joins the statistic's cache key."""
    statistic_needs: ClassVar[tuple[DataNeed, ...]] = ()
    """What the statistic needs besides the training samples every statistic is computed from
    (Fisher: per-sample gradients). With :attr:`statistic` it makes the method's data needs (``MethodSpec.data``)."""

    def __init__(self, params: Mapping[str, Any], context: MergeContext) -> None:
        self.params = dict(params)
        self.context = context
        self._exclude = [re.compile(p) for p in context.exclude]

    def merges(self, name: str) -> bool:
        """Whether the method merges ``name``; otherwise the base's tensor is kept as is."""
        if not self.uses_task_vectors:
            return True
        return not any(p.search(name) for p in self._exclude)

    def prepare(self, inputs: TensorInputs) -> None:
        """Optional pass over the tensors the method merges, before any output tensor is produced."""

    @classmethod
    def prepare_all(cls, methods: Sequence["MergeMethod"], inputs: TensorInputs) -> None:
        """Prepare ``methods`` (instances of this class, other hyperparameters) over one set of inputs.

        Each in turn by default. The grid merger calls this with every configuration a search
        round needs, so a method whose passes over the inputs can gather what every
        configuration needs (TIES: the thresholds of three densities from one histogram pass)
        reads the inputs once instead of once per configuration.
        """
        for method in methods:
            method.prepare(inputs)

    @classmethod
    def statistic_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameters that change the statistic (part of its cache key); the rest only change the merge."""
        return {key: params[key] for key in cls.statistic_keys if key in params}

    @classmethod
    def compute_statistic(cls, job: "StatisticJob", out_dir: "Path") -> None:
        """Write one expert's statistic into ``out_dir`` as safetensors named like the tensors it belongs to.

        Called by the harness only when the cache lacks it; ``out_dir`` becomes the artifact, so
        write nothing else there. :mod:`mergebench.merging.statistics` has the helpers (loading a
        model, encoding a sample, saving tensors).
        """
        raise NotImplementedError(f"{cls.__name__} declares statistic {cls.statistic!r} but does not compute it")

    @classmethod
    def data_needs(cls) -> tuple[DataNeed, ...]:
        """What the method's statistic needs (nothing for a data-free method); validation comes from its spec's grids."""
        return (DataNeed.TRAINING_SAMPLES, *cls.statistic_needs) if cls.statistic else ()

    def merge_delta(self, name: str, base: "torch.Tensor", experts: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """The unscaled merged task vector, for methods with ``scales_delta``."""
        raise NotImplementedError(f"{type(self).__name__} does not split into base + scaling * delta")

    def merge_tensor(self, name: str, base: "torch.Tensor", experts: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """Return the merged tensor for ``name`` (any float dtype; the engine casts to the base's)."""
        if not self.scales_delta:
            raise NotImplementedError(f"{type(self).__name__} must implement merge_tensor")
        delta = self.merge_delta(name, base, experts)  # a fresh tensor: scaled in place
        return scaled_sum(base, delta, self.params.get("scaling", 1.0), out=delta)
