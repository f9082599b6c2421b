"""The base of the built-in data-aware methods: their per-expert statistics, read back tensor by tensor.

Each subclass declares and computes its statistic (see :class:`MergeMethod`); this class only opens
the cached folders the harness passes in ``context.statistics``.
"""

from __future__ import annotations

import torch

from mergebench.checkpoint import CheckpointReader
from mergebench.merging.api import MergeMethod


class StatisticMethod(MergeMethod):
    """A method that reads ``context.statistics[label]`` (a safetensors folder) for every expert."""

    def _readers(self) -> list[CheckpointReader]:
        readers = getattr(self, "_opened", None)
        if readers is None:
            readers = [CheckpointReader(self.context.statistics[label]) for label in self.context.domains]
            self._opened = readers
        return readers

    def statistics_of(self, name: str, device: torch.device) -> list[torch.Tensor] | None:
        """Every expert's statistic for tensor ``name`` (float32), or None where it has none."""
        readers = self._readers()
        if not all(name in reader for reader in readers):
            return None
        return [reader.get(name).to(device, torch.float32) for reader in readers]
