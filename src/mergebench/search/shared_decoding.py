"""Evaluate many merges of the form ``θ = θ_base + λ·Δ`` together, sharing decode steps.

Why: greedy decoding of a few rows is bound by reading the weights, not by arithmetic. On the
embedded 135M model one decode step costs about 40 ms for one row, 90 ms for sixteen. The
validation search scores 30 TIES points that differ only in λ and density (three merged task
vectors Δ); one at a time, every point pays every decode step of every generative surrogate on
its own, however few items it is scored on.

Every layer whose output is affine in its own parameters (linear, embedding) obeys
``f(x; θ_B + λΔ) = f(x; θ_B) + λ·(f(x; Δ) − f(x; 0))``. So rows of different variants can share
one forward pass that reads θ_B and each Δ once: forward hooks add ``λ_row · (f(x; Δ_row) −
f(x; 0))`` to every such layer's output, with ``λ_row`` and ``Δ_row`` those of the variant the
row belongs to. Layers whose parameters are vectors (norms) are cheaper still: they are called
again once with a weight per row, the variant's own ``θ_B + λ_row·Δ_row``. A shared step reads
the base and one Δ per group, so variants share only when they outnumber that (30 TIES points
in 3 density groups: yes; 3 finalists in 3 groups: no). Before the first use a self-check
compares the batched logits with the variant's own weights on a short prompt; an architecture
the identity does not hold for (a layer not affine in its parameters) fails it and is
evaluated one variant at a time instead.

Log-likelihood passes are already compute-bound (whole sequences in one pass), where the shared
pass would double the arithmetic; they run per variant with its weights written into the
model in place (exactly the weights the merge stage would write).

Tasks stay unaware: each variant's task runs in its own thread against a proxy model; the
proxies' calls are gathered round by round (a round ends when every unfinished task waits on
a call) and served together by the calling thread, which alone touches torch.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence, TypeVar

from mergebench import progress
from mergebench.evaluation.api import GenerationRequest, LanguageModel, Loglikelihood, LoglikelihoodRequest, RowTrackingModel
from mergebench.merging.tensors import scaled_sum

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
    def _hooks(self, rows: "_RowPlan") -> list:
        """Forward hooks making every layer Δ touches give each row its variant's output (see :func:`_extra_fn`)."""
        import torch

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
            extra = _extra_fn(module, touched, torch)
            groups = {g: d for g, d in self.deltas.items() if any(name in d for name in touched.values())}
            handles.append(module.register_forward_hook(
                lambda mod, args, out, extra=extra, groups=groups: rows.add(out, args, extra, groups)))
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
        plan = _RowPlan(lambda request: variants[owner[id(request)]])
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
            plan = _RowPlan(lambda _row: variant)
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
        rounds = _Rounds(self.lm, runs)
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


def _extra_fn(module, touched: Mapping[str, str], torch):
    """How a layer's output becomes each row's variant's output, by the kind of layer.

    Linear and embedding layers add ``λ_row · f(x; Δ)`` per segment of rows (their ``f(x; 0)`` is
    0). Layers whose touched parameters are all vectors (norms) are called once with a weight per
    row, ``base + λ_row · Δ_row``: exactly the variant's own weight, one call for all segments.
    Anything else takes the generic update ``λ_row · (f(x; Δ) − f(x; 0))`` per segment.
    """
    import torch.nn.functional as F
    from torch.func import functional_call

    def per_row(scales, like):
        return scales.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    if type(module).forward is torch.nn.Linear.forward:  # subclasses may rescale: they take the generic path
        def linear(args, group, scales, out):
            weight, bias = group.get(touched.get("weight")), group.get(touched.get("bias"))
            x = args[0]
            if weight is not None:  # scale the inputs: in <= out mostly; add into the rows' output in place
                rows = (x * per_row(scales, x)).reshape(-1, x.shape[-1])
                out.view(-1, out.shape[-1]).addmm_(rows, weight.to(x.dtype).t())
            if bias is not None:
                out.add_(per_row(scales, out) * bias.to(out.dtype))
            return out
        return linear
    if type(module).forward is torch.nn.Embedding.forward:
        def embedding(args, group, scales, out):
            update = F.embedding(args[0], group[touched["weight"]]).to(module.weight.dtype)
            return out.add_(update * per_row(scales, update))
        return embedding

    def generic(args, group, scales, out):
        zeros = {attr: torch.zeros_like(p) for attr, p in module._parameters.items() if p is not None}
        swapped = {attr: group[name].to(zeros[attr].dtype) if name in group else zeros[attr]
                   for attr, name in touched.items()}
        update = functional_call(module, {**zeros, **swapped}, args) - functional_call(module, zeros, args)
        return out.add_(update * per_row(scales, update))

    if not all(module._parameters[attr].dim() == 1 for attr in touched):
        return generic

    def row_weighted(args, segments, groups, out):
        """The layer called once with each row's own vector parameters (shape ``rows × 1… × n``).

        ``None`` if the layer does not take a parameter per row (it then takes the generic path)."""
        if row_weighted.refused:
            return None
        x, rows = args[0], out.shape[0]
        own = {}
        for attr, name in touched.items():
            base = module._parameters[attr].detach()
            weights = base.expand(rows, -1).clone()
            for group, start, stop, scales in segments:
                delta = groups.get(group, {}).get(name)
                if delta is not None:  # as materialize writes it: base + λ·Δ in float32, per row
                    weights[start:stop] = scaled_sum(base.to(delta.dtype), delta, scales.to(delta.dtype).view(-1, 1))
            own[attr] = weights.view(rows, *([1] * (x.dim() - 2)), -1)
        try:
            result = functional_call(module, own, args)
        except RuntimeError:  # a layer that checks its weight's shape (layer_norm)
            result = None
        if result is None or result.shape != out.shape or result.dtype != out.dtype:
            row_weighted.refused = True
            return None
        return result

    row_weighted.refused = False
    row_weighted.generic = generic
    return row_weighted


class _RowPlan:
    """Which variant each row of the current forward pass belongs to, as contiguous row slices.

    Rows arrive grouped (see :meth:`DeltaBatch._shared_generate`), so each group is a slice
    ``[start, stop)`` with a per-row scale vector: a layer's update is computed on that slice's
    rows only and added in place through a view, no gather or scatter of rows.
    """

    def __init__(self, variant_of: Callable[[Any], Variant]) -> None:
        self.variant_of = variant_of
        self.segments: list[tuple[Hashable, int, int, Any]] = []  # (group, start, stop, per-row scales)
        self.inside = False  # computing a layer's update calls the layer again (generic layers): no hook then

    def select(self, requests: Sequence[Any]) -> None:
        import torch

        segments: list[tuple[Hashable, int, list[float]]] = []  # (group, start, per-row scales)
        for row, request in enumerate(requests):
            variant = self.variant_of(request)
            if not segments or segments[-1][0] != variant.group:
                segments.append((variant.group, row, []))
            segments[-1][2].append(variant.scale)
        self.segments = [(group, start, start + len(scales), torch.tensor(scales)) for group, start, scales in segments
                         if any(scales)]

    def add(self, out, args, extra, groups):
        """``out`` made each row's variant's output, for the groups with a delta of this layer."""
        if self.inside:
            return out
        self.inside = True
        try:
            if hasattr(extra, "generic"):  # one call with per-row weights, unless the layer refuses them
                result = extra(args, self.segments, groups, out)
                if result is not None:
                    return result
                extra = extra.generic
            rows = out.shape[0]
            for group, start, stop, scales in self.segments:
                group_deltas = groups.get(group)
                if group_deltas is None:
                    continue
                part = args if start == 0 and stop == rows else \
                    tuple(a[start:stop] if hasattr(a, "shape") and a.dim() and a.shape[0] == rows else a for a in args)
                extra(part, group_deltas, scales, out[start:stop])
            return out
        finally:
            self.inside = False


class _Proxy(LanguageModel):
    """What one variant's task sees: the resident model, with its two calls sent to the rounds."""

    def __init__(self, lm: LanguageModel, rounds: "_Rounds", k: int) -> None:
        self._lm, self._rounds, self._k = lm, rounds, k
        self.name = lm.name

    @property
    def has_chat_template(self) -> bool:
        return self._lm.has_chat_template

    def chat_prompt(self, messages):
        return self._lm.chat_prompt(messages)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return self._rounds.call(self._k, "generate", list(requests))

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Loglikelihood]:
        return self._rounds.call(self._k, "loglikelihood", list(requests))

    def __getattr__(self, name: str):
        return getattr(self._lm, name)


class _Rounds:
    """Runs one job per thread; each round serves every waiting call together."""

    def __init__(self, lm: LanguageModel, runs: Sequence[Callable[[LanguageModel], Any]]) -> None:
        self.lm, self.runs, self.n = lm, runs, len(runs)
        self.cond = threading.Condition()
        self.pending: dict[int, tuple[str, list]] = {}
        self.answers: dict[int, Any] = {}
        self.live = self.n

    def call(self, k: int, kind: str, requests: list) -> Any:
        with self.cond:
            self.pending[k] = (kind, requests)
            self.cond.notify_all()
            while k not in self.answers:
                self.cond.wait()
            answer = self.answers.pop(k)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def run(self, serve: Callable[[dict[int, tuple[str, list]]], dict[int, Any]]) -> list[Any]:
        results: list[Any] = [None] * self.n
        errors: dict[int, BaseException] = {}

        def work(k: int) -> None:
            try:
                results[k] = self.runs[k](_Proxy(self.lm, self, k))
            except BaseException as error:  # noqa: B036 - handed to the calling thread, which re-raises
                errors[k] = error
            finally:
                with self.cond:
                    self.live -= 1
                    self.cond.notify_all()

        threads = [threading.Thread(target=work, args=(k,), daemon=True, name=f"variant-{k}") for k in range(self.n)]
        for thread in threads:
            thread.start()
        while True:
            with self.cond:
                while self.live and len(self.pending) < self.live:
                    self.cond.wait()
                if not self.live:
                    break
                calls, self.pending = self.pending, {}
            try:
                answers: dict[int, Any] = serve(calls)
            except BaseException as error:  # noqa: B036 - every waiting task gets it and ends
                answers = {k: error for k in calls}
            with self.cond:
                self.answers.update(answers)
                self.cond.notify_all()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[min(errors)]
        return results
