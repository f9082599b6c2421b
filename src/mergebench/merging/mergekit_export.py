"""mergekit configs out: the ``mergekit_config.yml`` beside every merged checkpoint.

mergekit writes the config it ran next to its output; mergebench writes one that reproduces its
own merge with ``mergekit-yaml`` where mergekit can express it (mergekit 0.1.5's semantics):

* ``soup`` and ``linear`` → ``linear``; ``task_arithmetic`` → ``task_arithmetic`` (λ as ``lambda``);
* ``ties`` and ``breadcrumbs`` with ``scope=tensor`` (mergekit trims each tensor; the default
  ``scope=global`` trims over the whole model, which it cannot); TIES's ``merge_func`` mean or
  sum is mergekit's ``normalize`` on or off, its other study-code knobs only at mergekit's values;
* ``dare`` → ``dare_linear`` with ``density`` 1−p, ``weight`` 1/(1−p) and ``rescale: false``;
* ``della`` only at ``density`` 1 (ours rescales each kept entry by its keep probability,
  mergekit by the L1 norm);
* ``mergekit_gta`` → the mergekit method of its sparsifier and consensus;
* ``slerp`` and ``model_stock`` when no tensor is excluded (ours keeps the base's embeddings,
  which neither mergekit method can).

Tensors a method leaves out of its task vectors (embeddings and ``lm_head`` by default) become
mergekit filters giving them weight 0, one per tensor name (mergekit's filters match substrings,
so each name is checked to occur in no other). Random methods agree with mergekit in
distribution only: each tool draws its own masks. Everything else (Fisher, RegMean,
Localize-and-Stitch, Consensus, TSV, ISO, plugins' methods) gets a commented file saying why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mergebench.checkpoint.reader import DTYPE_NAMES

FILE = "mergekit_config.yml"
PKG = "mergebench_builtins.methods"

NO_FORM = {
    f"{PKG}.fisher:Fisher": "it weighs every entry by each expert's Fisher information, computed from training "
                            "samples; mergekit has no data-aware method",
    f"{PKG}.regmean:RegMean": "it solves linear layers from the Gram matrices of each expert's activations on "
                              "training samples; mergekit has no data-aware method",
    f"{PKG}.localize_stitch:LocalizeStitch": "its masks are trained on each expert's samples; mergekit has no "
                                             "data-aware method",
    f"{PKG}.dataless_localize_stitch:DatalessLocalizeStitch": "it stitches each expert's top-k regions onto the base "
                                                              "and averages overlaps; mergekit has no stitching method",
    f"{PKG}.consensus:Consensus": "its TALL masks keep entries that at least k tasks' masks select, which needs the "
                                  "summed task vector per entry; mergekit has no such mask",
    f"{PKG}.tsv:TaskSingularVectors": "it keeps and decorrelates each task's top singular vectors (SVD of task "
                                      "matrices); mergekit has no SVD-based method",
    f"{PKG}.iso:IsoC": "it flattens the singular spectrum of the summed task matrices; mergekit has no SVD-based method",
    f"{PKG}.iso:IsoCTS": "it flattens singular spectra in common and task subspaces; mergekit has no SVD-based method",
}
GTA_NAMES = {("none", "none"): "task_arithmetic", ("magnitude", "sum"): "ties", ("none", "sum"): "ties",
             ("random", "sum"): "dare_ties", ("random", "none"): "dare_linear",
             ("magnitude_outliers", "none"): "breadcrumbs", ("magnitude_outliers", "sum"): "breadcrumbs_ties",
             ("della_magprune", "sum"): "della", ("della_magprune", "none"): "della_linear",
             ("magnitude", "none"): None}


class NoForm(Exception):
    """The merge has no mergekit config; the message says why."""


def mergekit_config(impl: str, params: Mapping[str, Any], base_dir: Path, experts: Mapping[str, Path],
                    names: Sequence[str], merges: Callable[[str], bool], base_dtype: str) -> dict[str, Any]:
    """The mergekit config (as a mapping) that reproduces merging ``experts`` into ``base_dir`` with
    the method implemented by ``impl``; raise :class:`NoForm` when mergekit cannot express it."""
    if impl in NO_FORM:
        raise NoForm(NO_FORM[impl])
    excluded = [n for n in names if not merges(n)]
    build = _BUILDERS.get(impl)
    if build is None:
        raise NoForm(f"mergebench knows no mergekit form of {impl} (a plugin's method)")
    config = build(dict(params), base_dir, experts, excluded, names)
    out_dtype = DTYPE_NAMES.get(base_dtype, base_dtype)
    config["dtype"] = "float32"  # mergebench computes in float32 and writes the base's dtype
    if out_dtype != "float32":
        config["out_dtype"] = out_dtype
    return config


def write_mergekit_config(out_dir: Path, spec_name: str, impl: str, params: Mapping[str, Any], base_dir: Path,
                          experts: Mapping[str, Path], names: Sequence[str], merges: Callable[[str], bool],
                          base_dtype: str) -> str:
    """Write ``mergekit_config.yml`` into ``out_dir``; return one line for the model card."""
    import yaml

    stamp = f"`{spec_name}` {json.dumps(dict(params), sort_keys=True)}"
    try:
        config = mergekit_config(impl, params, Path(base_dir).resolve(), {k: Path(v).resolve() for k, v in experts.items()},
                                 names, merges, base_dtype)
    except NoForm as exc:
        (Path(out_dir) / FILE).write_text(
            f"# mergebench merged this model with {stamp}.\n"
            f"# mergekit cannot express this merge: {exc}.\n"
            "# mergekit covers linear, task arithmetic, TIES and DARE (per-tensor), Breadcrumbs, DELLA, SLERP and\n"
            "# Model Stock; see the README's section for mergekit users.\n")
        return f"no mergekit form: {exc}"
    random = params.get("sparsify") in ("random", "della_magprune") or config["merge_method"] in ("dare_linear", "dare_ties")
    header = (f"# Written by mergebench: reproduces this merge ({stamp}) with mergekit 0.1.5:\n"
              f"#   mergekit-yaml {FILE} OUT\n"
              + ("# Its random masks are mergekit's own draws: the result equals ours in distribution, not entry by entry.\n"
                 if random else ""))
    (Path(out_dir) / FILE).write_text(header + yaml.safe_dump(config, sort_keys=False))
    return f"mergekit: `{FILE}` reproduces this merge with mergekit-yaml"


# -- per method ----------------------------------------------------------------------------
def _weight(value: float, excluded: Sequence[str], names: Sequence[str]) -> Any:
    """``value``, or mergekit filters giving each excluded tensor weight 0 (one filter per exact name)."""
    if not excluded:
        return value
    kept = [n for n in names if n not in set(excluded)]
    for name in excluded:
        clash = next((other for other in kept if name in other), None)
        if clash:
            raise NoForm(f"the exclusion of {name} cannot be a mergekit filter: mergekit matches substrings and "
                         f"{name!r} is part of {clash!r}")
    return [*({"filter": name, "value": 0.0} for name in excluded), {"value": float(value)}]


def _labels(experts: Mapping[str, Path]) -> list[str]:
    return list(experts)


def _per_expert(params: Mapping[str, Any], key: str, labels: Sequence[str], default: float) -> list[float]:
    text = str(params.get(key) or "")
    if not text:
        return [default] * len(labels)
    values = dict(item.rsplit("=", 1) for item in text.split(","))
    return [float(values[label]) for label in labels]


def _gta(method: str, base_dir, experts, excluded, names, weights, per_model: dict[str, list[float]],
         shared: dict[str, Any]) -> dict[str, Any]:
    models: list[dict[str, Any]] = [{"model": str(base_dir)}]
    for index, path in enumerate(experts.values()):
        parameters = {"weight": _weight(weights[index], excluded, names),
                      **{key: values[index] for key, values in per_model.items()}}
        models.append({"model": str(path), "parameters": parameters})
    return {"merge_method": method, "base_model": str(base_dir), "models": models, "parameters": shared}


def _check_known(params: Mapping[str, Any], known: set[str], method: str) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise NoForm(f"{method}'s hyperparameter {unknown[0]} has no mergekit counterpart")


def _only_at(params: Mapping[str, Any], key: str, value: Any, method: str, why: str) -> None:
    """A knob of the study-code semantics has a mergekit form only at the value mergekit computes."""
    if params.get(key, value) != value:
        raise NoForm(f"{method} with {key}={params[key]} {why}; mergekit computes {key}={value}")


def _soup(params, base_dir, experts, excluded, names):
    _check_known(params, {"embeddings"}, "soup")
    _only_at(params, "embeddings", "averaged", "soup", "keeps the base's embeddings")
    return {"merge_method": "linear", "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in experts.values()],
            "parameters": {"normalize": True}}


def _linear(params, base_dir, experts, excluded, names):
    _check_known(params, {"weights", "normalize"}, "linear")
    weights = _per_expert(params, "weights", _labels(experts), 1.0)
    return {"merge_method": "linear",
            "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(experts.values(), weights)],
            "parameters": {"normalize": bool(params["normalize"])}}


def _task_arithmetic(params, base_dir, experts, excluded, names):
    _check_known(params, {"scaling"}, "task_arithmetic")
    return _gta("task_arithmetic", base_dir, experts, excluded, names, [1.0] * len(experts), {},
                {"lambda": float(params["scaling"]), "normalize": False})


def _per_tensor(params, method):
    if params.get("scope") != "tensor":
        raise NoForm(f"{method} with scope={params.get('scope')} trims over the whole model; mergekit trims each tensor "
                     f"(merge with --param scope=tensor for a mergekit form)")


def _ties(params, base_dir, experts, excluded, names):
    _check_known(params, {"scaling", "density", "scope", "merge_func", "topk", "zero_sign", "lm_head_in_threshold"},
                 "ties")
    _per_tensor(params, "ties")
    _only_at(params, "topk", "floor", "ties", "keeps one entry more than the density's share")
    _only_at(params, "zero_sign", "positive", "ties", "elects the model-wide majority sign where a sum is 0")
    _only_at(params, "lm_head_in_threshold", False, "ties", "counts the head in the threshold")
    n = len(experts)
    # the disjoint mean is mergekit's normalize (by the agreeing weights, 1 each); the study's sum is normalize off
    return _gta("ties", base_dir, experts, excluded, names, [1.0] * n, {"density": [float(params["density"])] * n},
                {"lambda": float(params["scaling"]), "normalize": params.get("merge_func", "mean") == "mean"})


def _breadcrumbs(params, base_dir, experts, excluded, names):
    _check_known(params, {"scaling", "density", "gamma", "scope"}, "breadcrumbs")
    _per_tensor(params, "breadcrumbs")
    n = len(experts)
    return _gta("breadcrumbs", base_dir, experts, excluded, names, [1.0] * n,
                {"density": [float(params["density"])] * n, "gamma": [float(params["gamma"])] * n},
                {"lambda": float(params["scaling"]), "normalize": False})


def _dare(params, base_dir, experts, excluded, names):
    _check_known(params, {"scaling", "p"}, "dare")
    keep, n = 1.0 - float(params["p"]), len(experts)
    return _gta("dare_linear", base_dir, experts, excluded, names, [1.0 / keep] * n, {"density": [keep] * n},
                {"lambda": float(params["scaling"]), "normalize": False, "rescale": False})


def _della(params, base_dir, experts, excluded, names):
    _check_known(params, {"scaling", "density", "epsilon"}, "della")
    if params["density"] < 1:
        raise NoForm("della rescales each kept entry by 1/its keep probability and mergekit's della by the L1 norm "
                     "of the task vector; they agree only at density 1")
    n = len(experts)
    return _gta("della", base_dir, experts, excluded, names, [1.0] * n, {"density": [1.0] * n},
                {"lambda": float(params["scaling"]), "normalize": True})


def _mergekit_gta(params, base_dir, experts, excluded, names):
    _check_known(params, {"scaling", "sparsify", "consensus", "weights", "densities", "gammas", "epsilons",
                          "normalize", "rescale"}, "mergekit_gta")
    method = GTA_NAMES.get((params["sparsify"], params["consensus"]))
    if method is None:
        raise NoForm(f"mergekit has no method with sparsify={params['sparsify']} and consensus={params['consensus']}")
    labels = _labels(experts)
    per_model = {"density": _per_expert(params, "densities", labels, 1.0) if params["sparsify"] != "none"
                 else [1.0] * len(labels)}  # no sparsifier: densities have no effect (ties at density 1)
    if params["sparsify"] == "magnitude_outliers":
        per_model["gamma"] = _per_expert(params, "gammas", labels, 0.01)
    if params["sparsify"] == "della_magprune":
        per_model["epsilon"] = _per_expert(params, "epsilons", labels, 0.15)
    return _gta(method, base_dir, experts, excluded, names, _per_expert(params, "weights", labels, 1.0), per_model,
                {"lambda": float(params["scaling"]), "normalize": bool(params["normalize"]),
                 "rescale": bool(params["rescale"])})


def _whole(method: str, excluded: Sequence[str]) -> None:
    if excluded:
        raise NoForm(f"{method} here keeps the base's {', '.join(excluded[:3])}{' ...' if len(excluded) > 3 else ''}, "
                     f"which mergekit's {method} cannot (merge with --no-exclude for a mergekit form)")


def _slerp(params, base_dir, experts, excluded, names):
    _check_known(params, {"t"}, "slerp")
    _whole("slerp", excluded)
    first, second = (str(p) for p in experts.values())
    return {"merge_method": "slerp", "base_model": first, "models": [{"model": first}, {"model": second}],
            "parameters": {"t": float(params["t"])}}


def _model_stock(params, base_dir, experts, excluded, names):
    _check_known(params, set(), "model_stock")
    _whole("model_stock", excluded)
    return {"merge_method": "model_stock", "base_model": str(base_dir),
            "models": [{"model": str(base_dir)}, *({"model": str(p)} for p in experts.values())]}


_BUILDERS = {
    f"{PKG}.soup:Soup": _soup,
    f"{PKG}.linear:Linear": _linear,
    f"{PKG}.task_arithmetic:TaskArithmetic": _task_arithmetic,
    f"{PKG}.ties:Ties": _ties,
    f"{PKG}.breadcrumbs:Breadcrumbs": _breadcrumbs,
    f"{PKG}.dare:Dare": _dare,
    f"{PKG}.della:Della": _della,
    f"{PKG}.mergekit_gta:MergekitGTA": _mergekit_gta,
    f"{PKG}.slerp:Slerp": _slerp,
    f"{PKG}.model_stock:ModelStock": _model_stock,
}
