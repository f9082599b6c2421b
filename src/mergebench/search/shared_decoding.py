"""Evaluate many merges of the form ``θ = θ_base + λ·Δ`` together, sharing decode steps.

Why: greedy decoding of a few rows is bound by reading the weights, not by arithmetic, so points
decoded one at a time would each pay every decode step of every generative surrogate alone,
however few items they are scored on.

Rows of different variants share one forward pass that reads θ_B and each Δ once: forward hooks
on every layer Δ touches give each row its variant's output (:mod:`mergebench.search.row_updates`:
layers affine in their parameters add ``λ_row · (f(x; Δ_row) − f(x; 0))``, norms are called
again with each row's own weight). A shared step reads the base and one Δ per group, so
variants share only when they outnumber that (the grid's 30 TIES points in 3 density groups
do, halving's finalists, one group each, do not). Before the first use a self-check compares the
batched logits with the variant's own weights on a short prompt; an architecture the identity
does not hold for (a layer not affine in its parameters) fails it and is evaluated one variant
at a time instead.

Log-likelihood passes are already compute-bound (whole sequences in one pass), where the shared
pass would double the arithmetic; they run per variant with its weights written into the
model in place (exactly the weights the merge stage would write).

Tasks stay unaware: their calls are gathered round by round (:mod:`mergebench.search.rounds`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence, TypeVar

from mergebench import progress
from mergebench.evaluation.api import GenerationRequest, LanguageModel, RowTrackingModel
from mergebench.merging.tensors import scaled_sum
from mergebench.search.rounds import Rounds
from mergebench.search.row_updates import RowPlan, update_for

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

ROWS_PER_VARIANT_BATCH = 4
"""A shared generation batch holds up to this many times the model's own batch size of rows."""


@dataclass(frozen=True)
class Variant:
    """Weights ``base + scale · deltas[group]`` (names outside ``deltas[group]`` keep the base)."""

    group: Hashable
    scale: float


class NotAffine(RuntimeError):
    """The shared pass does not reproduce a variant's own logits on this architecture."""


class DeltaBatch:
    """Variants of one resident model; :meth:`evaluate` runs a task function on each of them.

    ``base`` holds the base weights by parameter name (what :meth:`restore` writes back) and
    ``deltas`` the merged task vectors (float32) by group, then parameter name; groups may be
    added to it between calls.
    """

    def __init__(self, lm: RowTrackingModel, base: Mapping[str, "torch.Tensor"],
                 deltas: dict[Hashable, Mapping[str, "torch.Tensor"]]) -> None:
        self.lm, self.base, self.deltas = lm, base, deltas
        self.params = dict(lm.model.named_parameters())  # tied weights appear once, under their first name
        self._dirty: set[str] = set()
        self.sharing: bool | None = None
        """Whether variants generate together: ``None`` until the self-check ran, ``False`` if it failed."""

    # -- weights written in place ------------------------------------------------------------
    def materialize(self, variant: Variant) -> None:
        """Write the variant's weights into the model, as ``load_state_dict`` of its merge would."""
        import torch

        deltas = self.deltas[variant.group]
        with torch.no_grad():
            for name in self._dirty - set(deltas):
                self.params[name].copy_(self.base[name])
            for name, delta in deltas.items():
                param, b = self.params.get(name), self.base[name]
                if param is None:
                    continue
                if _in_place(param, b, delta):  # no temporary
                    scaled_sum(b, delta, variant.scale, out=param)
                else:
                    param.copy_(scaled_sum(b.to(delta.device, torch.float32), delta, variant.scale).to(b.dtype))
        self._dirty = {name for name in deltas if name in self.params}

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for name in self._dirty:
                self.params[name].copy_(self.base[name])
        self._dirty = set()

    # -- the shared pass -------------------------------------------------------------------
    def _hooks(self, rows: RowPlan) -> list:
        """Forward hooks making every layer Δ touches give each row its variant's output (see :mod:`.row_updates`)."""
        owner = {id(p): name for name, p in self.params.items()}
        handles = []
        for module in self.lm.model.modules():
            own = {attr: owner.get(id(p)) for attr, p in module._parameters.items() if p is not None}
            touched = {attr: name for attr, name in own.items()
                       if name is not None and any(name in d for d in self.deltas.values())}
            if not touched:
                continue
            if any(True for child in module.children() for _ in child.parameters()):
                raise NotAffine(f"{type(module).__name__} has parameters and sub-layers with parameters")
            update = update_for(module, touched)
            groups = {g: d for g, d in self.deltas.items() if any(name in d for name in touched.values())}
            handles.append(module.register_forward_hook(
                lambda mod, args, out, update=update, groups=groups: rows.add(out, args, update, groups)))
        return handles

    def _shared_generate(self, variants: Sequence[Variant], calls: Mapping[int, Sequence[GenerationRequest]]
                         ) -> dict[int, list[str]]:
        flat: list[GenerationRequest] = []
        owner: dict[int, int] = {}
        place: dict[int, int] = {}
        for k, requests in calls.items():
            for i, request in enumerate(requests):
                copy = dataclasses.replace(request)  # a distinct object per row, even for equal requests
                owner[id(copy)], place[id(copy)] = k, i
                flat.append(copy)
        # rows of one group side by side (a batch is then a few contiguous slices, one per group, and
        # stays so as rows finish), longest prompts first within a group (less padding)
        groups = list(dict.fromkeys(variants[k].group for k in calls))
        flat.sort(key=lambda r: (groups.index(variants[owner[id(r)]].group), -len(r.prompt)))
        plan = RowPlan(lambda request: variants[owner[id(request)]])
        self.restore()
        handles = self._hooks(plan)
        try:
            texts = self.lm.generate(flat, keep_order=True, batch_size=self.lm.batch_size * ROWS_PER_VARIANT_BATCH,
                                     row_listener=plan.select)
        finally:
            for handle in handles:
                handle.remove()
        out: dict[int, list[str]] = {k: [""] * len(requests) for k, requests in calls.items()}
        for request, text in zip(flat, texts):
            out[owner[id(request)]][place[id(request)]] = text
        return out

    def check(self, variant: Variant, prompt: str = "The capital of France is") -> None:
        """Raise :class:`NotAffine` unless the shared pass reproduces ``variant``'s own logits."""
        import torch

        tokens = self.lm.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.lm.device)
        with torch.inference_mode():
            self.materialize(variant)
            own = self.lm.model(input_ids=tokens).logits.float()
            self.restore()
            plan = RowPlan(lambda _row: variant)
            plan.select([None])
            handles = self._hooks(plan)
            try:
                shared = self.lm.model(input_ids=tokens).logits.float()
            finally:
                for handle in handles:
                    handle.remove()
        scale = own.abs().max().clamp(min=1.0)
        error = float((own - shared).abs().max() / scale)
        if error > 1e-3:
            raise NotAffine(f"shared pass differs from the variant's own logits by {error:.2e} (relative)")

    # -- the tasks -------------------------------------------------------------------------
    def evaluate(self, variants: Sequence[Variant], run: Callable[[LanguageModel], T] | Sequence[Callable[[LanguageModel], T]]
                 ) -> list[T]:
        """``run(model)`` for every variant (or ``run[k](model)`` for variant ``k``); results in order.

        A variant may appear more than once (one job per task, say): jobs of one round share one
        generation batch, and each distinct variant's weights are written once per round for the
        log-likelihoods of all its jobs together.
        """
        if not variants:
            return []
        runs = [run] * len(variants) if callable(run) else list(run)
        if len(runs) != len(variants):
            raise ValueError(f"{len(runs)} task functions for {len(variants)} variants")
        rounds = Rounds(self.lm, runs)
        try:
            return rounds.run(lambda calls: self._serve(variants, calls))
        finally:
            self.restore()

    def _serve(self, variants: Sequence[Variant], calls: Mapping[int, tuple[str, list]]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        generations = {k: requests for k, (kind, requests) in calls.items() if kind == "generate"}
        distinct = {variants[k] for k in generations}
        # a shared step reads the base and one Δ per group; apart, each variant reads its own weights
        worth_it = len(distinct) > 1 + len({v.group for v in distinct if v.scale != 0})
        if worth_it and self.sharing is None:
            try:
                self.check(next((v for v in distinct if v.scale != 0), variants[min(generations)]))
                self.sharing = True
            except NotAffine:
                self.sharing = False
        if worth_it and self.sharing:
            out.update(self._shared_generate(variants, generations))
        by_variant: dict[Variant, list[int]] = {}
        for k in sorted(calls):
            if k not in out:
                by_variant.setdefault(variants[k], []).append(k)
        if not by_variant:
            return out
        # one bar for the round's points, not a start and an end line per point and call
        with progress.progress(f"score {len(by_variant)} points ({self.lm.name})", total=len(by_variant),
                               unit="points") as bar, progress.use_sink(progress.NullSink()):
            for variant, jobs in by_variant.items():
                self.materialize(variant)
                for kind in ("generate", "loglikelihood"):
                    mine = [k for k in jobs if calls[k][0] == kind]
                    if not mine:
                        continue
                    flat = [request for k in mine for request in calls[k][1]]
                    answers = iter(self.lm.generate(flat) if kind == "generate" else self.lm.loglikelihood(flat))
                    for k in mine:
                        out[k] = [next(answers) for _ in calls[k][1]]
                bar.advance(1)
        return out


def _in_place(param, base, delta) -> bool:
    """Whether the merged weight can be computed straight into the parameter (same dtype and device)."""
    import torch

    return param.dtype == base.dtype == delta.dtype == torch.float32 and param.device == base.device == delta.device
