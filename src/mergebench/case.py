"""What a run is made of: cases of (model, method, task), and the method labels that are not merges.

Plain data, imported at pytest collection (no torch): :mod:`mergebench.selection` builds the
cases, :meth:`mergebench.pipeline.Pipeline.run_case` runs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHECKPOINT_METHOD = "checkpoint"
"""Method label of cases that evaluate an existing merged checkpoint (``--mb-checkpoint``)."""

MTL_METHOD = "mtl"
"""Method label of the multi-task baseline's cases: the model trained on every domain's data, scored like a merge."""


@dataclass(frozen=True)
class Case:
    """One benchmark case: a model, a method (with hyperparameters) and a task.

    With ``checkpoint`` set, the merge stage is skipped and that folder is evaluated as the
    merged model of ``model`` (method label :data:`CHECKPOINT_METHOD`).
    """

    model: str
    method: str
    task: str
    params: tuple[tuple[str, Any], ...] = ()
    suite: str = ""
    checkpoint: str | None = None

    @property
    def id(self) -> str:
        return f"{self.model}-{self.method}-{self.task}"
