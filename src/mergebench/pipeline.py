"""The benchmark pipeline: obtain base → obtain experts → merge → evaluate → record.

Every stage returns a cached artifact (see :mod:`mergebench.cache`) keyed by everything that
determined it, so the pytest cases, the CLI and a second run all share the same work:

* base:    hub id + revision (or the builder's name and version);
* expert:  hub id + revision, or base key + recipe + version + data fingerprint + seed;
* statistics (data-aware methods only): expert key + the method's statistic name + version + the
  hyperparameters that shape it + fingerprint of the recipe's training samples (+ the base's
  key when the statistic depends on it);
* merged:  base and expert keys + method + version + hyperparameters + seed + exclusions
  (+ the statistics' keys; + the semantics when it is not ``paper``, so that caches built before
  semantics existed keep their keys);
* eval:    model key + task + version + task fingerprint (items) + backend.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mergebench import progress
from mergebench.cache import ArtifactCache, ArtifactKey
from mergebench.cache.integrity import verify_if_artifact
from mergebench.case import MTL_METHOD, Case
from mergebench.checkpoint.identity import checkpoint_identity
from mergebench.errors import UsageError
from mergebench.evaluation.api import LanguageModel, TaskResult
from mergebench.evaluation.judge import JudgeSettings
from mergebench.merging.api import DEFAULT_EXCLUDE, MergeContext
from mergebench.plugin_manager import Registries
from mergebench.results import CaseResult, Score, ratio
from mergebench.results.items import item_values, read_samples
from mergebench.specs import DOMAINS, GENERAL, PAPER, ExpertSpec, MethodSpec, ModelSpec, RecipeSpec, TaskSpec


@dataclass(frozen=True)
class RunContext:
    """Settings shared by every stage of a run (what builders, recipes and tasks receive)."""

    cache: ArtifactCache
    device: str = "cpu"
    seed: int = 0
    model_roots: tuple[Path, ...] = ()
    allow_pickle: bool = False
    eval_limit: int | None = None
    batch_size: int = 16
    backend: str = "hf"
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    search: str = "none"  # hyperparameter validation search: none (declared defaults), grid or halving
    semantics: str = PAPER  # every method as published, or as the study's released code (specs.SEMANTICS)
    judge: JudgeSettings = field(default_factory=JudgeSettings.from_env)  # judged tasks' judge (mt_bench)


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint on disk, the key that identifies its content, and what to call it.

    ``label`` names the artifact in progress lines (``expert tiny-llama/math``); ``name`` names the
    model itself (``tiny-llama/math``), in its evaluations' labels and the loaded model's.
    """

    key: ArtifactKey
    path: Path
    label: str
    name: str


@dataclass(frozen=True)
class MergeInputs:
    """What a merge and a search of one (model, method) both start from, and the key fields they share."""

    base: ModelRef
    experts: dict[str, ModelRef]
    statistics: dict[str, Path]  # expert → its statistic's folder, for a data-aware method
    context: MergeContext
    key: dict[str, Any]  # base, experts, statistics, method and version, seed, exclusions

    @property
    def expert_dirs(self) -> dict[str, Path]:
        return {domain: ref.path for domain, ref in self.experts.items()}

    def verify(self) -> None:
        """Check the cached inputs against their manifests before a merge or a search reads them."""
        for path in (self.base.path, *self.expert_dirs.values(), *self.statistics.values()):
            verify_if_artifact(path)


class Pipeline:
    def __init__(self, context: RunContext, registries: Registries) -> None:
        self.context = context
        self.registries = registries
        self._models: OrderedDict[str, LanguageModel] = OrderedDict()
        # Bases and trained models resolved in this session: their keys hash training data and
        # weights, too costly to recompute for each of a session's cases (artifacts never change).
        self._resolved: dict[Any, ModelRef] = {}

    @property
    def cache(self) -> ArtifactCache:
        return self.context.cache

    def _announce(self, label: str) -> Callable[[], None]:
        return lambda: progress.note(f"  waiting for another worker to finish {label}")

    def _report(self, artifact_label: str, hit: bool, seconds: float) -> None:
        """Say when an artifact was built; reuse is summed up once per case (see :meth:`run_case`)."""
        if not hit:
            progress.note(f"  [built] {artifact_label} in {seconds:.1f}s")

    # -- base and experts ------------------------------------------------------------------
    def base(self, model: ModelSpec) -> ModelRef:
        if ("base", model) not in self._resolved:
            self._resolved["base", model] = self._base(model)
        return self._resolved["base", model]

    def _base(self, model: ModelSpec) -> ModelRef:
        label = f"base {model.name}"
        if model.source == "hub":
            return self._from_hub("base", model.hub_id, model.revision, label, model.name)
        if model.source != "builder" or not model.impl:
            raise UsageError(f"model {model.name!r} has source {model.source!r}; expected 'hub' or 'builder' with impl")
        from mergebench.specs import load_object

        key = ArtifactKey.of("base", {"model": model.name, "builder": model.impl, "version": model.version, "seed": self.context.seed})
        builder = load_object(model.impl)
        artifact = self.cache.get_or_build(key, lambda out: builder(out, self.context), label=label, on_wait=self._announce(label))
        self._report(label, artifact.hit, artifact.seconds)
        return ModelRef(key, artifact.path, label, model.name)

    def expert(self, model: ModelSpec, domain: str, base: ModelRef | None = None) -> ModelRef:
        return self.trained(model, model.expert(domain), f"expert {model.name}/{domain}", base)

    def mtl(self, model: ModelSpec, base: ModelRef | None = None) -> ModelRef:
        """The multi-task baseline of ``model``: fetched or trained like an expert, on every domain's data."""
        if model.mtl is None:
            raise UsageError(f"model {model.name!r} has no multi-task baseline (ModelSpec.mtl); drop 'mtl' from --mb-methods")
        return self.trained(model, model.mtl, f"multi-task model {model.name}", base)

    def trained(self, model: ModelSpec, expert: ExpertSpec, label: str, base: ModelRef | None = None) -> ModelRef:
        """The model ``expert`` names: fetched when it names a hub id, else trained by its recipe on the base (cached)."""
        if ("trained", model, expert) not in self._resolved:
            self._resolved["trained", model, expert] = self._trained(model, expert, label, base)
        return self._resolved["trained", model, expert]

    def _trained(self, model: ModelSpec, expert: ExpertSpec, label: str, base: ModelRef | None) -> ModelRef:
        name = f"{model.name}/{expert.domain}"
        if expert.hub_id:
            return self._from_hub("expert", expert.hub_id, expert.revision, label, name)
        base = base or self.base(model)
        recipe_spec, recipe = self._recipe(expert.recipe or "")
        key = ArtifactKey.of("expert", {
            "base": base.key.digest,
            "recipe": recipe_spec.name,
            "recipe_version": recipe_spec.version,
            "domain": expert.domain,
            "fingerprint": recipe.fingerprint(),
            "seed": self.context.seed,
        })

        def build(out: Path) -> None:
            verify_if_artifact(base.path)
            summary = recipe.train(base.path, out, seed=self.context.seed, work_dir=self.cache.work_dir(key))
            (out / "mergebench_expert.json").write_text(json.dumps(summary, indent=2, default=str))

        artifact = self.cache.get_or_build(key, build, label=label, on_wait=self._announce(label))
        self._report(label, artifact.hit, artifact.seconds)
        return ModelRef(key, artifact.path, label, name)

    def experts(self, model: ModelSpec, base: ModelRef | None = None) -> dict[str, ModelRef]:
        base = base or self.base(model)
        return {domain: self.expert(model, domain, base) for domain in model.domains}

    def _from_hub(self, stage: str, hub_id: str | None, revision: str | None, label: str, name: str) -> ModelRef:
        from mergebench import hub

        path = hub.resolve(hub_id or "", revision, roots=list(self.context.model_roots) or None)
        key = ArtifactKey.of(stage, {"hub_id": hub_id, "revision": revision, "content": checkpoint_identity(path)})
        return ModelRef(key, path, label, name)

    def _recipe(self, name: str) -> tuple[RecipeSpec, Any]:
        """A recipe's spec and its instance for this run: what trains an expert and what gives its training samples."""
        spec = self.registries.recipes.get(name)
        return spec, spec.load()(spec, self.context)

    # -- statistics of data-aware methods ---------------------------------------------------
    def statistics(self, model: ModelSpec, method: MethodSpec, params: Mapping[str, Any], base: ModelRef,
                   experts: Mapping[str, ModelRef]) -> dict[str, Path]:
        """Each expert's statistic for a data-aware method (empty for the others), computed on samples
        of the expert's training data from its recipe, cached per expert."""
        from mergebench.merging.statistics import statistics_for

        def samples_of(domain: str, count: int) -> list[dict[str, str]]:
            expert = model.expert(domain)
            if not expert.recipe:
                raise UsageError(
                    f"method {method.name!r} needs training samples of the {domain!r} expert of {model.name!r}, "
                    "but its ExpertSpec names no recipe describing its training data; add recipe=... to it"
                )
            _, recipe = self._recipe(expert.recipe)
            return recipe.samples(count, self.context.seed)

        return statistics_for(
            method, params, self.cache, (base.key.digest, base.path), {d: (r.key.digest, r.path) for d, r in experts.items()},
            samples_of, exclude=self.context.exclude, device=self.context.device,
        )

    # -- merge -----------------------------------------------------------------------------
    def merged(self, model: ModelSpec, method: MethodSpec, params: Mapping[str, Any] | None = None
               ) -> tuple[ModelRef, float]:
        """The merged checkpoint and the seconds its merge took (when it was built, maybe earlier)."""
        from mergebench.merging.engine import merge_checkpoints

        resolved = method.resolve_params(params)
        inputs = self._merge_inputs(model, method, resolved)
        label = f"merge {model.name}/{method.name}"
        key = ArtifactKey.of("merged", {**inputs.key, "params": method.key_params(resolved)})

        def build(out: Path) -> None:
            inputs.verify()
            merge_checkpoints(method, resolved, inputs.base.path, inputs.expert_dirs, out, context=inputs.context,
                              metadata={"mergebench_key": key.digest, "mergebench_semantics": self.context.semantics},
                              allow_pickle=self.context.allow_pickle)

        artifact = self.cache.get_or_build(key, build, label=label, on_wait=self._announce(label))
        self._report(label, artifact.hit, artifact.seconds)
        seconds = _build_seconds(artifact.path) + sum(_build_seconds(p) for p in inputs.statistics.values())
        return ModelRef(key, artifact.path, label, f"{model.name}/{method.name}"), seconds

    def _merge_inputs(self, model: ModelSpec, method: MethodSpec, params: Mapping[str, Any]) -> MergeInputs:
        """What merging ``model``'s experts with ``method`` starts from; ``params`` shape the statistics."""
        base = self.base(model)
        experts = self.experts(model, base)
        if method.domains is not None:  # a column that merges some experts only (a mergekit config's)
            missing = [d for d in method.domains if d not in experts]
            if missing:
                raise UsageError(f"method {method.name!r} merges the {', '.join(missing)} expert(s), which model "
                                 f"{model.name!r} lacks (its experts: {', '.join(experts)})")
            experts = {d: experts[d] for d in method.domains}
        exclude = self.context.exclude if method.exclude is None else method.exclude
        statistics = self.statistics(model, method, params, base, experts)
        key = {
            **({"statistics": {d: p.name for d, p in statistics.items()}} if statistics else {}),
            "base": base.key.digest,
            "experts": {d: ref.key.digest for d, ref in experts.items()},
            "method": method.name,
            "method_version": method.version,
            # a column's name is the user's (a mergekit config's); what it runs must tell its merges apart
            **({"impl": method.impl} if method.domains is not None else {}),
            "seed": self.context.seed,
            "exclude": list(exclude),
            **({"semantics": self.context.semantics} if self.context.semantics != PAPER else {}),
        }
        context = MergeContext(seed=self.context.seed, device=self.context.device, exclude=exclude,
                               domains=tuple(experts), statistics=statistics)
        return MergeInputs(base, experts, statistics, context, key)

    # -- hyperparameter search ---------------------------------------------------------------
    def search(self, model: ModelSpec, method: MethodSpec, fixed: Mapping[str, Any] | None = None
               ) -> tuple[dict[str, Any], float]:
        """Best hyperparameters on the validation surrogates, and the seconds the search took (:mod:`mergebench.search.stage`)."""
        from mergebench.search.stage import search_stage

        return search_stage(self, model, method, fixed)

    # -- evaluate --------------------------------------------------------------------------
    def language_model(self, ref: ModelRef) -> LanguageModel:
        """The loaded model for ``ref`` (kept in memory for the next task on the same model)."""
        found = self._models.get(ref.key.digest)
        if found is not None:
            self._models.move_to_end(ref.key.digest)
            return found
        from mergebench.evaluation.backends import load_language_model

        verify_if_artifact(ref.path)
        lm = load_language_model(self.context.backend, ref.path, name=ref.name,
                                 batch_size=self.context.batch_size, device=self.context.device)
        self._models[ref.key.digest] = lm
        while len(self._models) > 2:
            self._models.popitem(last=False)
        return lm

    def evaluate(self, ref: ModelRef, task: TaskSpec) -> TaskResult:
        impl = task.load()(task, self.context, limit=self.context.eval_limit)
        label = f"eval {ref.name} on {task.name}"
        key = ArtifactKey.of("eval", {
            "model": ref.key.digest,
            "task": task.name,
            "task_version": task.version,
            "fingerprint": impl.fingerprint(),
            "backend": self.context.backend,
        })

        def build(out: Path) -> None:
            lm = self.language_model(ref)
            impl.check_model(lm)
            result = impl.evaluate(lm)
            (out / "result.json").write_text(json.dumps(result.as_dict(), indent=2))
            with open(out / "samples.jsonl", "w", encoding="utf-8") as handle:
                for sample in result.samples:
                    handle.write(json.dumps(sample, default=str) + "\n")

        artifact = self.cache.get_or_build(key, build, label=label, on_wait=self._announce(label))
        self._report(label, artifact.hit, artifact.seconds)
        result = TaskResult.from_dict(json.loads((artifact.path / "result.json").read_text()))
        result.samples = read_samples(artifact.path / "samples.jsonl")  # they name the items (results/items.py)
        return result

    # -- a whole case ----------------------------------------------------------------------
    def checkpoint(self, path: Path | str) -> ModelRef:
        path = Path(path).resolve()
        if not (path / "config.json").is_file():
            raise UsageError(f"--mb-checkpoint {path} is not a Hugging Face checkpoint folder (no config.json)")
        key = ArtifactKey.of("checkpoint", {"path": str(path), "content": checkpoint_identity(path)})
        return ModelRef(key, path, f"checkpoint {path.name}", path.name)

    def run_case(self, case: Case) -> CaseResult:
        model = self.registries.models.get(case.model)
        task = self.registries.tasks.get(case.task)
        first_event = len(self.cache.events)
        started = time.perf_counter()
        validation_seconds = 0.0
        if case.checkpoint:
            method, params = None, {"path": str(Path(case.checkpoint).resolve())}
            merged, merge_seconds = self.checkpoint(case.checkpoint), 0.0
        elif case.method == MTL_METHOD:  # its "merge time" is its training time, the cost of having it
            merged = self.mtl(model)  # raises if the model has no multi-task baseline
            method, params = None, {"recipe": model.mtl.recipe or model.mtl.hub_id}
            merge_seconds = _build_seconds(merged.path)
        else:
            method = self.registries.methods.get(case.method)
            semantics = self.context.semantics
            params = method.resolve_params(dict(case.params), semantics)  # a method with no such form: UsageError
            if self.context.search != "none":
                fixed = {**method.semantic_params(semantics), **dict(case.params)}
                params, validation_seconds = self.search(model, method, fixed)
            merged, merge_seconds = self.merged(model, method, params)
        base = self.base(model)
        merged_result = self.evaluate(merged, task)
        base_result = self.evaluate(base, task)
        expert_result = None
        if task.domain in DOMAINS and task.domain in model.domains:
            expert_result = self.evaluate(self.expert(model, task.domain, base), task)
        reference = "expert" if task.domain != GENERAL else "base"
        reference_result = expert_result if reference == "expert" else base_result
        normalized = ratio(merged_result.score, reference_result.score if reference_result else None,
                           task.higher_is_better)
        events = self.cache.events[first_event:]
        hits = sum(1 for e in events if e.hit)
        progress.note(f"  {case.id}: {task.metric} {merged_result.score:.4f} ± {merged_result.stderr:.4f} "
                      f"(n={merged_result.n}) in {time.perf_counter() - started:.1f}s; "
                      f"cache: {hits} artifacts reused, {len(events) - hits} built")
        return CaseResult(
            case_id=case.id,
            model=model.name,
            method=method.name if method else case.method,
            task=task.name,
            domain=task.domain,
            metric=task.metric,
            higher_is_better=task.higher_is_better,
            params=params,
            merged=_score(merged_result),
            expert=_score(expert_result),
            base=_score(base_result),
            reference=reference,
            normalized=normalized,
            merge_seconds=round(merge_seconds, 3),
            validation_seconds=round(validation_seconds, 3),
            suite=case.suite,
            task_version=task.version,
            method_version=method.version if method else "",
            semantics=self.context.semantics,
            keys={"merged": merged.key.digest, "base": base.key.digest},
            artifacts=[e.as_dict() for e in events],
            items=item_values(task, merged_result, expert_result, base_result),
        )


def _build_seconds(artifact_dir: Path) -> float:
    """How long an artifact took to build (recorded in its meta.json, so also known on a cache hit)."""
    meta = artifact_dir / "meta.json"
    return float(json.loads(meta.read_text()).get("build_seconds", 0.0)) if meta.is_file() else 0.0


def _score(result: TaskResult | None) -> Score | None:
    return None if result is None else Score(result.score, result.stderr, result.n)
