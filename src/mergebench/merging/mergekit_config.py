"""mergekit configs in: read a mergekit YAML merge config and say what it is on our engine, or refuse.

A mergekit config (``merge_method``, ``base_model``, ``models`` with per-model ``parameters``,
global ``parameters``, ``dtype``) maps onto a mergebench method and hyperparameters when every
part of it has a counterpart (mergekit 0.1.5's semantics, ``merge_methods/`` and
``parameter_resolver.py``):

* ``task_arithmetic``, ``ties``, ``dare_ties``, ``dare_linear``, ``breadcrumbs``,
  ``breadcrumbs_ties``, ``della``, ``della_linear`` → ``mergekit_gta`` (per-model ``weight``,
  ``density``, ``gamma``, ``epsilon``; global ``lambda``, ``normalize``, ``rescale``);
* ``linear`` → ``linear`` (per-model ``weight``, ``normalize``);
* ``slerp`` → ``slerp`` (``t``; ``base_model`` is the first endpoint);
* ``model_stock`` → ``model_stock``.

mergekit merges every tensor, so the plan excludes none. Parts with no counterpart are refused
by name before anything is read or written: ``slices``/``modules`` (layer stacking), a
``tokenizer_source`` other than the base, a ``chat_template``, LoRA or hub-revision model
references, a parameter given as a gradient over layers, a per-tensor ``filter`` (except the
one form mergebench itself exports: weight 0 on named tensors, which is an exclusion), an
unknown key or parameter, and every other ``merge_method``.

References stay strings here: :func:`plan_config` validates the structure; the command line
takes them as checkpoint folders (:mod:`mergebench.cli.merge_mergekit`), the pytest column as
the selected model's experts by domain (:mod:`mergebench.pytest_mergekit`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mergebench.errors import UsageError

# mergekit name → (sparsifier, consensus, default normalize, default rescale), as mergekit's registry builds them
GTA_METHODS: dict[str, tuple[str, str, bool, bool]] = {
    "task_arithmetic": ("none", "none", False, False),
    "ties": ("magnitude", "sum", True, False),
    "dare_ties": ("random", "sum", False, True),
    "dare_linear": ("random", "none", False, True),
    "breadcrumbs": ("magnitude_outliers", "none", False, False),
    "breadcrumbs_ties": ("magnitude_outliers", "sum", False, False),
    "della": ("della_magprune", "sum", True, True),
    "della_linear": ("della_magprune", "none", False, True),
}
OTHER_METHODS = ("linear", "slerp", "model_stock")
MAPPED = (*GTA_METHODS, *OTHER_METHODS)

REQUIRED = object()
TOP_LEVEL = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
             "tokenizer", "chat_template", "slices", "modules"}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Param:
    """A parameter of a mergekit method: per model (``weight``) or shared (``lambda``), float or bool."""

    kind: type
    default: Any = REQUIRED
    per_model: bool = False


def method_params(merge_method: str) -> dict[str, Param]:
    """The parameters mergekit 0.1.5 declares for ``merge_method`` (its ``ParameterSpec``s)."""
    if merge_method in GTA_METHODS:
        sparsifier, _, normalize, rescale = GTA_METHODS[merge_method]
        params = {"int8_mask": Param(bool, False), "normalize": Param(bool, normalize),
                  "rescale": Param(bool, rescale), "lambda": Param(float, 1.0),
                  "weight": Param(float, per_model=True), "density": Param(float, 1.0, per_model=True)}
        if sparsifier == "magnitude_outliers":
            params["gamma"] = Param(float, 0.01, per_model=True)
        if sparsifier == "della_magprune":
            params["epsilon"] = Param(float, 0.15, per_model=True)
        return params
    return {
        "linear": {"weight": Param(float, per_model=True), "normalize": Param(bool, True)},
        "slerp": {"t": Param(float)},
        "model_stock": {"filter_wise": Param(bool, False)},
    }[merge_method]


@dataclass(frozen=True)
class MergekitPlan:
    """A mergekit config as a mergebench merge.

    ``experts`` maps a label (the last part of the model's reference, made unique) to the
    reference as written, in mergekit's input order; ``base`` is ``base_model`` (``None`` for a
    ``linear`` config without one: any input then serves as the architecture's template).
    """

    merge_method: str
    method: str
    params: dict[str, Any]
    base: str | None
    experts: dict[str, str]
    exclude: tuple[str, ...] = ()
    dtype: str | None = None
    out_dtype: str | None = None
    notes: tuple[str, ...] = field(default=())


def load_config(path: Path | str) -> dict[str, Any]:
    """The YAML mapping in ``path`` (safe loader), or a UsageError naming what is wrong with the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read mergekit config {path}: {exc.strerror or exc}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"mergekit config {path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"mergekit config {path} must be a YAML mapping with merge_method and models")
    return config


class Refusal:
    """Builds the one error a config gets: where it came from, the part, why, and the fix."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, part: str, why: str) -> UsageError:
        return UsageError(f"mergekit config {self.source}: {part}: {why}")


def plan_config(config: Mapping[str, Any], source: str = "CONFIG") -> MergekitPlan:
    """Validate ``config`` and map it onto a mergebench method; raise a UsageError naming the first part that does not map."""
    refuse = Refusal(source)
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise refuse(unknown[0], f"not a key of mergekit configs (keys: {', '.join(sorted(TOP_LEVEL))})")
    for key, why in (
        ("slices", "slices stack or cut layers (frankenmerges); mergebench merges whole models of one architecture "
                   "tensor by tensor — use models: instead"),
        ("modules", "per-module configs (multimodal models) have no counterpart; use models: for one language model"),
        ("chat_template", "mergebench keeps the base's tokenizer and chat template; remove chat_template"),
    ):
        if config.get(key) is not None:
            raise refuse(key, why)
    _check_tokenizer(config, refuse)
    merge_method = config.get("merge_method")
    if merge_method not in MAPPED:
        raise refuse(f"merge_method: {merge_method}",
                     f"has no counterpart in mergebench; these run: {', '.join(MAPPED)}")
    dtype, out_dtype = (_dtype(config.get(k), k, refuse) for k in ("dtype", "out_dtype"))

    models = config.get("models")
    if not isinstance(models, list) or not models:
        raise refuse("models", "must be a non-empty list of {model: ..., parameters: {...}}")
    base = config.get("base_model")
    base = None if base is None else _reference(base, "base_model", refuse)
    entries: list[tuple[str, dict]] = []
    for position, entry in enumerate(models):
        where = f"models[{position}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise refuse(where, "must be a mapping with a model: key")
        extra = sorted(set(entry) - {"model", "parameters"})
        if extra:
            raise refuse(f"{where}.{extra[0]}", "not a key of a model entry (model, parameters)")
        reference = _reference(entry["model"], f"{where}.model", refuse)
        if any(reference == seen for seen, _ in entries):
            raise refuse(where, f"model {reference} is listed twice")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise refuse(f"{where}.parameters", "must be a mapping of parameter names to values")
        entries.append((reference, parameters))
    global_params = config.get("parameters") or {}
    if not isinstance(global_params, dict):
        raise refuse("parameters", "must be a mapping of parameter names to values")

    spec = method_params(merge_method)
    for name in global_params:
        if name not in spec:
            raise refuse(f"parameters.{name}", f"{merge_method} has no parameter {name!r} (it takes: {', '.join(spec)})")
    notes: list[str] = []
    base_is_input = merge_method not in GTA_METHODS and merge_method != "model_stock"  # linear and slerp weigh it
    for reference, parameters in entries:
        for name in parameters:
            if name not in spec:
                raise refuse(f"parameters of {reference}.{name}",
                             f"{merge_method} has no parameter {name!r} (it takes: {', '.join(spec)})")
            if not spec[name].per_model:
                raise refuse(f"parameters of {reference}.{name}",
                             f"{name} is shared by all models: mergekit reads it only from the top-level parameters "
                             "(under a model it would be ignored); move it there")
        if reference == base and parameters and not base_is_input:
            notes.append(f"the parameters of base_model {reference} ({', '.join(parameters)}) are not used by "
                         f"{merge_method}, as in mergekit")

    shared = {name: _setting(global_params, name, p, "parameters", refuse)
              for name, p in spec.items() if not p.per_model}
    zero_filters: dict[str, tuple[str, ...]] = {}

    def per_model(reference: str, parameters: dict) -> dict[str, Any]:
        values = {}
        for name, p in spec.items():
            if not p.per_model:
                continue
            where, setting = (f"parameters of {reference}", parameters) if name in parameters else ("parameters", global_params)
            if name == "weight" and merge_method in GTA_METHODS:
                values[name], zero_filters[reference] = _weight_with_filters(setting, where, refuse)
                if values[name] is REQUIRED:
                    raise refuse(f"models: {reference}", f"{merge_method} needs a weight for every model besides "
                                                         "base_model (mergekit has no default)")
            else:
                values[name] = _setting(setting, name, p, where, refuse)
                if values[name] is REQUIRED:
                    raise refuse(f"models: {reference}", f"{merge_method} needs a {name} for every model it weighs")
        return values

    if merge_method == "linear":
        inputs = [r for r, _ in entries] + ([base] if base is not None and base not in dict(entries) else [])
        per_input = {r: per_model(r, dict(entries).get(r, {})) for r in inputs}
        if shared["normalize"] and abs(sum(v["weight"] for v in per_input.values())) < 1e-8:
            raise refuse("parameters: weight", "linear with normalize divides by the sum of the weights, which is 0")
        labels = _labels(inputs)
        return MergekitPlan(merge_method, "linear", {
            "weights": _per_expert({labels[r]: v["weight"] for r, v in per_input.items()}),
            "normalize": shared["normalize"]}, base, {labels[r]: r for r in inputs}, (), dtype, out_dtype, tuple(notes))

    if base is None:
        raise refuse("base_model", f"{merge_method} needs a base_model")
    others = [r for r, _ in entries if r != base]
    if merge_method == "slerp":
        if len(others) != 1:
            raise refuse("models", f"slerp interpolates base_model and exactly one other model; got {len(others)} others")
        if shared["t"] is REQUIRED:
            raise refuse("parameters: t", "slerp needs t (0 gives base_model, 1 the other model)")
        labels = _labels([base, others[0]])
        return MergekitPlan(merge_method, "slerp", {"t": shared["t"]}, base,
                            {labels[base]: base, labels[others[0]]: others[0]}, (), dtype, out_dtype, tuple(notes))
    if merge_method == "model_stock":
        if shared["filter_wise"]:
            raise refuse("parameters: filter_wise", "mergebench's model_stock takes one angle per tensor; "
                                                    "filter_wise (one per row) has no counterpart: remove it")
        if len(others) < 2:
            raise refuse("models", f"model_stock needs base_model and at least two other models; got {len(others)}")
        labels = _labels(others)
        return MergekitPlan(merge_method, "model_stock", {}, base, {labels[r]: r for r in others}, (),
                            dtype, out_dtype, tuple(notes))

    if not others:
        raise refuse("models", f"{merge_method} needs at least one model besides base_model")
    per_input = {r: per_model(r, dict(entries)[r]) for r in others}
    filters = {zero_filters[r] for r in others}
    if len(filters) > 1:
        raise refuse("parameters: weight", "per-tensor filters of weight 0 differ between models; mergebench "
                                           "excludes the same tensors from every model's task vector")
    exclude = tuple(re.escape(f) for f in next(iter(filters)))
    sparsifier, consensus, _, _ = GTA_METHODS[merge_method]
    labels = _labels(others)
    params = {
        "scaling": shared["lambda"], "sparsify": sparsifier, "consensus": consensus,
        "normalize": shared["normalize"], "rescale": shared["rescale"],
        "weights": _per_expert({labels[r]: per_input[r]["weight"] for r in others}),
        "densities": _per_expert({labels[r]: per_input[r]["density"] for r in others}),
    }
    if sparsifier == "none":
        if any(per_input[r]["density"] != 1 for r in others):
            notes.append(f"density has no effect in {merge_method} (it sparsifies nothing), as in mergekit")
        params["densities"] = ""
    for key, name in (("gammas", "gamma"), ("epsilons", "epsilon")):
        if name in spec:
            params[key] = _per_expert({labels[r]: per_input[r][name] for r in others})
    if sparsifier == "della_magprune":
        for r in others:
            density, epsilon = per_input[r]["density"], per_input[r]["epsilon"]
            if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
                raise refuse(f"parameters of {r}", f"density ± epsilon must lie inside (0, 1) (keep probabilities); "
                                                   f"got density={density}, epsilon={epsilon}")
    return MergekitPlan(merge_method, "mergekit_gta", params, base, {labels[r]: r for r in others}, exclude,
                        dtype, out_dtype, tuple(notes))


# -- parts -----------------------------------------------------------------------------------
def _check_tokenizer(config: Mapping[str, Any], refuse: Refusal) -> None:
    source = config.get("tokenizer_source")
    if source is not None and source != "base":
        raise refuse(f"tokenizer_source: {source}", "a tokenizer merge (union, or another model's vocabulary) builds a "
                                                    "new vocabulary; mergebench keeps the base's tokenizer "
                                                    "(tokenizer_source: base, or none)")
    tokenizer = config.get("tokenizer")
    if tokenizer is not None and tokenizer != {"source": "base"}:
        raise refuse("tokenizer", "only tokenizer: {source: base} maps (mergebench keeps the base's tokenizer; "
                                  "added tokens and padding the vocabulary have no counterpart)")


def _dtype(value: Any, key: str, refuse: Refusal) -> str | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise refuse(f"{key}: {value}", f"must be one of {', '.join(DTYPES)}")
    return name


def _reference(value: Any, where: str, refuse: Refusal) -> str:
    if not isinstance(value, str) or not value.strip():
        raise refuse(where, "must be a model reference: a checkpoint folder (or, in pytest, an expert's domain)")
    if "+" in value:
        raise refuse(f"{where}: {value}", "a model+LoRA reference; merge the adapter into its model first "
                                          "(mergebench reads full checkpoints)")
    if "@" in value:
        raise refuse(f"{where}: {value}", "a hub revision; mergebench reads local checkpoint folders: download that "
                                          "revision and give its folder")
    return value.strip()


def _scalar(value: Any, kind: type, where: str, refuse: Refusal) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.strip().lower() in {"true", "yes", "1"}
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise refuse(where, f"{value!r} is not a boolean")
    if isinstance(value, bool):
        raise refuse(where, f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise refuse(where, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise refuse(where, f"{value!r} is not a finite number")
    return number


def _unconditional(value: Any, where: str, refuse: Refusal) -> Any:
    """A setting without filters or gradients, as its scalar; refuse the others by name."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            first = value[0]
            if set(first) <= {"value", "filter"} and first.get("filter") in (None, "*") and "value" in first:
                return _unconditional(first["value"], where, refuse)  # mergekit's first match applies to every tensor
            filtered = next((v.get("filter") for v in value if v.get("filter") not in (None, "*")), None)
            if filtered is None:
                raise refuse(where, f"{value!r} is not a number, nor mergekit's {{value: ..., filter: ...}}")
            raise refuse(where, f"a per-tensor filter ({filtered!r}) gives tensors different values; mergebench "
                                "applies one value to every tensor: give a plain number")
        raise refuse(where, f"a gradient over layers ({value!r}); mergebench applies one value to every layer: give "
                            "a plain number")
    return value


def _setting(settings: Mapping[str, Any], name: str, p: Param, where: str, refuse: Refusal) -> Any:
    if name not in settings:
        return p.default
    value = _unconditional(settings[name], f"{where}.{name}", refuse)
    return _scalar(value, p.kind, f"{where}.{name}", refuse)


def _weight_with_filters(settings: Mapping[str, Any], where: str, refuse: Refusal) -> tuple[Any, tuple[str, ...]]:
    """A GTA weight, and the tensors a filter sets it to 0 for: the exclusion mergebench's export writes.

    ``[{filter: NAME, value: 0}, ..., {value: w}]`` gives tensors whose name contains NAME a zero
    weight (their task vector is dropped: they keep the base's values) and the others w.
    """
    if "weight" not in settings:
        return REQUIRED, ()
    value = settings["weight"]
    if isinstance(value, list) and len(value) > 1 and all(isinstance(v, dict) for v in value):
        *filtered, last = value
        if (all(set(v) == {"filter", "value"} and isinstance(v["filter"], str) and v["filter"] not in ("", "*")
                and not isinstance(v["value"], bool) and v["value"] == 0 for v in filtered)
                and set(last) == {"value"}):
            return _scalar(_unconditional(last["value"], f"{where}.weight", refuse), float, f"{where}.weight", refuse), \
                tuple(sorted(v["filter"] for v in filtered))
    return _setting(settings, "weight", Param(float, per_model=True), where, refuse), ()


def _labels(references: list[str]) -> dict[str, str]:
    """A short unique label per reference: its last path component with only [A-Za-z0-9_.-] (then -2, -3...)."""
    labels: dict[str, str] = {}
    for reference in references:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", reference.rstrip("/").split("/")[-1]) or "model"
        label, count = stem, 1
        while label in labels.values():
            count += 1
            label = f"{stem}-{count}"
        labels[reference] = label
    return labels


def _per_expert(values: Mapping[str, float]) -> str:
    return ",".join(f"{label}={float(value)!r}" for label, value in values.items())

