"""What plugins declare: the metadata of methods, tasks, models and finetuning recipes.

Specs are small frozen dataclasses with no heavy imports, so that collecting the whole
benchmark grid never imports torch. The implementation behind a spec is a
``"module:attribute"`` string, imported only when the spec is used (as lm-eval's registry
does), which is what keeps ``pytest --collect-only`` of the full grid at a few seconds.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import InitVar, dataclass, field
from typing import Any

from mergebench.errors import PluginError, UsageError

DOMAINS = ("instruction", "math", "multilingual", "coding", "safety")
"""The five domains of the study, in the order of its tables; also the suffixes of the
hub experts (``MergeBench/<base>_<domain>``)."""

GENERAL = "general"
"""Pseudo-domain of the forgetting tasks (scored against the base model, not an expert)."""

PAPER = "paper"
STUDY_CODE = "study-code"
SEMANTICS = (PAPER, STUDY_CODE)
"""A run's semantics (``--mb-semantics``, ``mergebench merge --semantics``): every method as published
(``paper``, the default: each hyperparameter at its declared default) or as the study's released code
computes it (``study-code``: the values a method's :class:`Semantics` declares). docs/fidelity.md says
where the two differ and by how much."""


def load_object(reference: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute."""
    module_name, _, attr_path = reference.partition(":")
    if not module_name or not attr_path:
        raise UsageError(f"implementation reference {reference!r} must look like 'module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


class DataNeed(str, enum.Enum):
    """What data a merge method consumes besides the checkpoints (the study's Section 3.3)."""

    NONE = "none"
    VALIDATION = "validation"  # hyperparameters tuned on validation surrogates
    TRAINING_SAMPLES = "training_samples"  # statistics from samples of each expert's training set
    GRADIENTS = "gradients"  # per-sample gradients of each expert (Fisher)


KEYED = ("always", "unless_default", "never")


@dataclass(frozen=True)
class HyperParam:
    """One hyperparameter of a merge method: its default, its validation grid and its range.

    ``source`` says where the default comes from (a paper's section, the study's script as
    ``file:line``, or "ours" with the reason), so a user can tell a choice from a citation.
    ``keyed`` says when the value joins a merged artifact's cache key: ``always``; ``unless_default``
    for knobs added after artifacts were cached (at their default they change nothing, so the
    artifacts built before them keep their keys); ``never`` for settings that steer the search, not
    the merge.
    """

    name: str
    default: Any
    grid: tuple[Any, ...] = ()
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    source: str = ""
    keyed: str = "always"

    def __post_init__(self) -> None:
        if self.keyed not in KEYED:
            raise PluginError(f"hyperparameter {self.name!r}: keyed={self.keyed!r} is not one of {', '.join(KEYED)}")

    def validate(self, value: Any) -> Any:
        """Coerce ``value`` to the default's type and check its range; raise a UsageError naming the bounds."""
        kind = type(self.default)
        if self.default is not None and not isinstance(value, kind):
            try:
                if kind is bool and isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                        raise ValueError(value)
                    value = lowered in {"true", "1", "yes"}
                elif kind is int and isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    value = kind(value)
            except (TypeError, ValueError):
                raise UsageError(
                    f"hyperparameter {self.name}={value!r} is not a {kind.__name__} "
                    f"(default {self.default!r})"
                ) from None
        if self.choices and value not in self.choices:
            raise UsageError(
                f"hyperparameter {self.name}={value!r} is not one of {', '.join(map(repr, self.choices))}"
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise UsageError(
                    f"hyperparameter {self.name}={value!r} is out of range [{self.low}, {self.high}]"
                )
        return value


@dataclass(frozen=True)
class Semantics:
    """A named form of a method: the hyperparameter values that make it compute what ``name`` says.

    ``study-code`` forms reproduce the study's released code (uiuctml/MergeBench at b245648);
    ``source`` cites the lines they follow and ``approximates`` says what cannot be reproduced
    exactly (empty when it is bit for bit up to float32 arithmetic). A form with no values says
    that the method computes the same in that semantics; one with ``unavailable`` says why the
    method cannot be run that way (a run in that semantics leaves it out with that reason).
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    source: str = ""
    approximates: str = ""
    unavailable: str = ""


@dataclass(frozen=True)
class SearchPlan:
    """How a validation search walks a method's grid, when not as one product of every grid.

    ``per_task`` (Consensus TA as its paper tunes it): the grid of ``param`` is searched for each
    domain on that domain's surrogate alone, the method's configuration ``isolate=DOMAIN`` (one
    task's part of the merge) being the model scored; the winners, as ``DOMAIN=value`` pairs,
    become ``per_task_param``; then the remaining grids are searched as a product on every
    surrogate. A method with a plan also declares a ``search_plan`` hyperparameter (``per_task``
    or ``product``) so a run can still ask for the product grid.
    """

    param: str
    per_task_param: str
    isolate: str


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: how it is called, what it needs, what it can be tuned over.

    ``family`` follows the study's Table 1 (``coefficient`` tuning vs ``sparsification``); it
    becomes a pytest marker. ``grid`` of each hyperparameter is the Table-7 validation grid.

    ``data`` (what the method consumes besides the checkpoints) is derived, not declared, so it
    cannot disagree with what the engine does: the class's statistic and its needs
    (:meth:`MergeMethod.data_needs`), plus validation when a hyperparameter has a grid. Reading it
    imports the class (and torch), so only ``mergebench plugins`` does, never pytest collection.
    A spec may still pass ``data=`` (specs written before it was derived); reading ``data`` then
    raises a :class:`PluginError` if the declaration disagrees.
    """

    name: str
    impl: str
    version: str = "1"
    family: str = "coefficient"
    hyperparams: tuple[HyperParam, ...] = ()
    data: InitVar[tuple[DataNeed, ...] | None] = None  # read back through the derived property below
    min_experts: int = 1
    max_experts: int | None = None
    opt_in: bool = False  # left out of the default grid: runs when named or with --mb-methods all
    in_all: bool = True  # False: runs only when named (at its defaults it repeats another method: mergekit interop)
    domains: tuple[str, ...] | None = None  # the experts it merges, by domain (None: all of the model's)
    exclude: tuple[str, ...] | None = None  # tensor regexes kept from the base (None: the run's; (): none, as in mergekit)
    summary: str = ""
    reference_url: str = ""
    semantics: tuple[Semantics, ...] = ()
    """The method's named forms besides ``paper`` (its declared defaults); a semantics it does not
    declare is one it has no form in (a third-party method has no study code), and a run in that
    semantics leaves it out, saying why."""
    search_plan: SearchPlan | None = None
    declared_data: tuple[DataNeed, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self, data: tuple[DataNeed, ...] | None) -> None:
        object.__setattr__(self, "declared_data", None if data is None else tuple(data))
        for form in self.semantics:
            for key, value in form.params:
                self.param(key).validate(value)

    def param(self, name: str) -> HyperParam:
        for hp in self.hyperparams:
            if hp.name == name:
                return hp
        from mergebench.registry import suggest

        known = [hp.name for hp in self.hyperparams]
        raise UsageError(
            f"method {self.name!r} has no hyperparameter {name!r}"
            + suggest(name, known)
            + (f"; it takes: {', '.join(known)}" if known else "; it takes none")
        )

    def resolve_params(self, overrides: dict[str, Any] | None = None, semantics: str = PAPER) -> dict[str, Any]:
        """Defaults, then the values ``semantics`` fixes, then ``overrides``, each validated.

        Unknown names are errors, and so is an override that contradicts a value the semantics
        fixes (the result would no longer be that semantics).
        """
        params = {hp.name: hp.default for hp in self.hyperparams}
        fixed = self.semantic_params(semantics)
        params.update(fixed)
        for key, value in (overrides or {}).items():
            value = self.param(key).validate(value)
            if key in fixed and value != fixed[key]:
                raise UsageError(
                    f"method {self.name!r}: {key}={value!r} contradicts the {semantics} semantics, which fixes "
                    f"{key}={fixed[key]!r}; drop that parameter, or use the {PAPER} semantics to set it freely"
                )
            params[key] = value
        return params

    def form(self, semantics: str) -> Semantics | None:
        """The declared form of ``semantics`` (``paper`` is always the defaults), or None when the method has none."""
        if semantics == PAPER:
            return Semantics(PAPER)
        if semantics not in SEMANTICS:
            raise UsageError(f"unknown semantics {semantics!r}; choose one of {', '.join(SEMANTICS)}")
        return next((f for f in self.semantics if f.name == semantics), None)

    def semantic_params(self, semantics: str) -> dict[str, Any]:
        """The hyperparameter values ``semantics`` fixes; a UsageError when the method has no such form."""
        form = self.form(semantics)
        if form is None or form.unavailable:
            reason = form.unavailable if form is not None else "it declares none"
            raise UsageError(f"method {self.name!r} has no {semantics} form ({reason}); leave it out, "
                             f"or use the {PAPER} semantics")
        return dict(form.params)

    def missing_form(self, semantics: str) -> str:
        """Why the method cannot run in ``semantics`` (empty when it can): what a run says when it leaves it out."""
        try:
            self.semantic_params(semantics)
        except UsageError as exc:
            return str(exc)
        return ""

    def key_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The part of resolved ``params`` that identifies a merge (see :attr:`HyperParam.keyed`)."""
        out = {}
        for key, value in params.items():
            hp = next((h for h in self.hyperparams if h.name == key), None)
            if hp is not None and (hp.keyed == "never" or (hp.keyed == "unless_default" and value == hp.default)):
                continue
            out[key] = value
        return out

    def grid_size(self) -> int:
        size = 1
        for hp in self.hyperparams:
            if hp.grid:
                size *= len(hp.grid)
        return size if any(hp.grid for hp in self.hyperparams) else 0

    def load(self) -> Any:
        return load_object(self.impl)


def _derived_data(spec: MethodSpec) -> tuple[DataNeed, ...]:
    needs = tuple(spec.load().data_needs())
    if any(hp.grid for hp in spec.hyperparams):
        needs += (DataNeed.VALIDATION,)
    needs = needs or (DataNeed.NONE,)
    if spec.declared_data is not None and set(spec.declared_data) != set(needs):
        def names(found):
            return "(" + ", ".join(getattr(d, "value", str(d)) for d in found) + ")"

        raise PluginError(
            f"method {spec.name!r} declares data={names(spec.declared_data)} but needs {names(needs)}: a method's data "
            f"needs follow from its class ({spec.impl}: its statistic and statistic_needs) and from its hyperparameters' "
            "grids (validation); drop data= from its MethodSpec"
        )
    return needs


# Set after the class is made: ``data`` is also the name of the InitVar that accepts a declaration.
MethodSpec.data = property(_derived_data, doc="What the method consumes besides the checkpoints (derived; see MethodSpec).")


@dataclass(frozen=True)
class TaskSpec:
    """An evaluation task.

    ``domain`` is one of :data:`DOMAINS` for the multi-task score (normalized by the domain's
    expert), or :data:`GENERAL` for forgetting tasks (normalized by the base model).
    ``role`` separates test tasks from validation surrogates used for hyperparameter search.
    ``stand_in_for`` names the benchmark of the study a mini task replaces, so reports can say so.
    """

    name: str
    impl: str
    domain: str
    version: str = "1"
    metric: str = "accuracy"
    higher_is_better: bool = True
    role: str = "test"  # "test" | "validation"
    suites: frozenset[str] = frozenset()
    summary: str = ""
    stand_in_for: str = ""
    needs_chat_template: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Any:
        return load_object(self.impl)


@dataclass(frozen=True)
class ExpertSpec:
    """Where one domain expert of a model comes from, and what it was trained on.

    With ``hub_id`` the weights are fetched from that repository; otherwise ``recipe`` trains
    them. A hub expert may also name the ``recipe`` that describes its training data, which is
    where data-aware merge methods take their samples from.
    """

    domain: str
    hub_id: str | None = None
    revision: str | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.hub_id is None and self.recipe is None:
            raise UsageError(f"expert {self.domain!r} needs a hub_id or a recipe")


@dataclass(frozen=True)
class ModelSpec:
    """A base model and its experts.

    ``source`` says how the base checkpoint is obtained: ``hub`` (``hub_id`` at ``revision``),
    or ``builder`` (``impl`` is a function ``build(out_dir, context)`` that writes a Hugging
    Face checkpoint, used for the embedded model and the tiny test models).
    """

    name: str
    family: str
    size: str
    instruct: bool
    source: str = "hub"
    hub_id: str | None = None
    revision: str | None = None
    impl: str | None = None
    version: str = "1"
    experts: tuple[ExpertSpec, ...] = ()
    suites: frozenset[str] = frozenset()
    summary: str = ""
    options: tuple[tuple[str, Any], ...] = field(default=())
    mtl: ExpertSpec | None = None
    """The multi-task baseline (one model trained on all domains' data), when the model has one."""
    param_defaults: tuple[tuple[str, Any], ...] = ()
    """Hyperparameter defaults for this model's merges, over the methods' own (e.g. fewer statistics
    samples on a CPU-sized model); ``--mb-param`` still overrides them. They land in each case's params."""

    def expert(self, domain: str) -> ExpertSpec:
        for source in self.experts:
            if source.domain == domain:
                return source
        raise UsageError(
            f"model {self.name!r} has no {domain!r} expert; it has: "
            + (", ".join(e.domain for e in self.experts) or "none")
        )

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(e.domain for e in self.experts)


@dataclass(frozen=True)
class RecipeSpec:
    """A finetuning recipe that turns a base model into a domain expert."""

    name: str
    impl: str
    domain: str
    version: str = "1"
    summary: str = ""
    stand_in_for: str = ""
    suites: frozenset[str] = frozenset()
    options: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Any:
        return load_object(self.impl)
