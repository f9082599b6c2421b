"""Task Arithmetic: add the sum of task vectors, scaled by one shared coefficient λ.

Ilharco et al., "Editing models with task arithmetic", ICLR 2023. https://arxiv.org/abs/2212.04089
θ_merged = θ_pre + λ Σ_i (θ_i − θ_pre)
"""

from __future__ import annotations

from mergebench.merging.plain import PlainForm
from mergebench_builtins.methods.gta import GeneralizedTaskArithmetic


class TaskArithmetic(GeneralizedTaskArithmetic):
    """No sparsifier, plain sum: the generalized method with nothing switched on."""

    def plain_form(self) -> PlainForm | None:
        """A plain sum of task vectors: merged without torch (mergebench.merging.plain), the same bytes."""
        if type(self) is not TaskArithmetic:  # a subclass may change what is summed
            return None
        return PlainForm(scaling=self.params.get("scaling", 1.0))
