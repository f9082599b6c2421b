"""``mergebench plugins NAME``: one method, task, model or recipe in full.

What a listing line cannot hold: each hyperparameter's doc, range or choices, validation grid and
source, the data a method consumes, the models whose defaults override a method's, where a recipe is
used, and which plugin and distribution registered it.
"""

from __future__ import annotations

from mergebench.cli.plugin_text import (
    DATA_NEEDS,
    INDENT,
    base_source,
    data_needs,
    expert_source,
    param_range,
    provider_text,
    suites,
    value,
    values,
    wrap,
)
from mergebench.errors import UnknownNameError
from mergebench.registry import suggest
from mergebench.specs import DataNeed

KINDS = (("methods", "merge method"), ("tasks", "task"), ("models", "model"), ("recipes", "finetuning recipe"))


def describe(registries, name: str) -> list[str]:
    """Every registered thing called ``name`` (names are unique within a kind, not across kinds)."""
    found = [(kind, label, getattr(registries, kind).entry(name)) for kind, label in KINDS if name in getattr(registries, kind)]
    if not found:
        known = [n for kind, _ in KINDS for n in getattr(registries, kind).names()]
        raise UnknownNameError(f"no method, task, model or recipe is named {name!r}{suggest(name, known)} "
                               "(`mergebench plugins` lists them all)")
    lines: list[str] = []
    for kind, label, entry in found:
        lines += ([""] if lines else []) + DESCRIBERS[kind](entry.spec, label, registries) + [""]
        impl = getattr(entry.spec, "impl", None)
        lines += (field("implementation", impl) if impl else []) + field("version", entry.spec.version)
        lines += field("provided by", provider_text(entry.provider))
    return lines


def field(label: str, text: str) -> list[str]:
    return wrap(f"{label + ':':<17}{text}", hanging=" " * 17)


def _heading(spec, label: str, tags: list[str]) -> list[str]:
    return wrap(f"{spec.name}: {label} ({', '.join(tags)})", indent="", hanging=INDENT) + (wrap(spec.summary) if spec.summary else [])


def describe_method(spec, label: str, registries) -> list[str]:
    lines = _heading(spec, label, [spec.family] + (["opt-in"] if spec.opt_in else []))
    lines += field("reference", spec.reference_url) if spec.reference_url else []
    needs, error = data_needs(spec)
    lines += field("data", error or "; ".join(f"{n}: {DATA_NEEDS.get(DataNeed(n), n)}" for n in needs))
    lines += field("experts", f"{spec.min_experts} or more" if spec.max_experts is None else
                   f"exactly {spec.min_experts}" if spec.max_experts == spec.min_experts else
                   f"{spec.min_experts} to {spec.max_experts}")
    lines += field("default grid", "no: runs when named (--mb-methods NAME) or with --mb-methods all" if spec.opt_in
                   else "yes: in every pytest benchmarks run unless --mb-methods names others")
    if spec.grid_size():
        lines += field("validation grid", f"{spec.grid_size()} points (--mb-search grid; halving scores fewer)")
    how = f"set with pytest benchmarks --mb-param {spec.name}.KEY=VALUE or mergebench merge --param KEY=VALUE"
    lines += [""] + wrap(f"Hyperparameters ({how if spec.hyperparams else 'none'})", indent="", hanging=INDENT)
    for hp in spec.hyperparams:
        lines += ["", f"{INDENT}{hp.name} = {value(hp.default)}"]
        lines += wrap(hp.doc, indent=INDENT * 2) if hp.doc else [INDENT * 2 + "(no doc)"]
        lines += [f"{INDENT * 2}{k}: {v}" for k, v in _param_facts(hp, spec.name, registries)]
    return lines


def _param_facts(hp, method: str, registries) -> list[tuple[str, str]]:
    facts = []
    if param_range(hp):
        facts.append(("range" if not hp.choices else "choices", param_range(hp)))
    if hp.grid:
        facts.append(("grid", f"{values(hp.grid)} ({len(hp.grid)} points)"))
    source = getattr(hp, "source", "")  # HyperParam.source: where the default and grid come from
    if source:
        facts.append(("source", source))
    overrides = {}
    for model in registries.models.specs():
        for key, v in model.param_defaults:
            if key == hp.name:
                overrides.setdefault(value(v), []).append(model.name)
    facts += [(f"default on {', '.join(models)}", v) for v, models in overrides.items()]
    return facts


def describe_task(spec, label: str, registries) -> list[str]:
    lines = _heading(spec, label, [spec.domain])
    lines += field("metric", f"{spec.metric}, {'higher' if spec.higher_is_better else 'lower'} is better")
    lines += field("role", "test: a benchmark case" if spec.role == "test" else
                   f"{spec.role}: a surrogate for hyperparameter search (--mb-search), never a case")
    lines += field("suites", suites(spec))
    lines += field("stands in for", spec.stand_in_for) if spec.stand_in_for else []
    lines += field("chat template", "needed (the model's own)") if spec.needs_chat_template else []
    lines += field("options", _options(spec.options)) if spec.options else []
    return lines


def describe_model(spec, label: str, registries) -> list[str]:
    lines = _heading(spec, label, [spec.family, spec.size, "instruct" if spec.instruct else "base"])
    lines += field("base", base_source(spec))
    lines += field("suites", suites(spec))
    lines += field("merge defaults", _options(spec.param_defaults) + " (over the methods' own; --mb-param overrides)") \
        if spec.param_defaults else []
    lines += field("options", _options(spec.options)) if spec.options else []
    experts = [(e.domain, expert_source(e)) for e in spec.experts]
    experts += [("mtl", expert_source(spec.mtl) + "; the multi-task baseline, --mb-methods mtl")] if spec.mtl else []
    lines += ["", f"{INDENT}experts:"]
    return lines + [line for domain, where in experts for line in wrap(f"{domain:<13} {where}", indent=INDENT * 2, hanging=" " * 14)]


def describe_recipe(spec, label: str, registries) -> list[str]:
    lines = _heading(spec, label, [spec.domain])
    lines += field("stands in for", spec.stand_in_for) if spec.stand_in_for else []
    lines += field("suites", suites(spec))
    users = sorted(m.name for m in registries.models.specs()
                   if any(e.recipe == spec.name for e in (*m.experts, *([m.mtl] if m.mtl else []))))
    lines += field("experts of", ", ".join(users) or "no registered model (mergebench finetune --recipe NAME)")
    lines += field("options", _options(spec.options)) if spec.options else []
    return lines


def _options(options) -> str:
    return ", ".join(f"{k}={value(v)}" for k, v in options)


DESCRIBERS = {"methods": describe_method, "tasks": describe_task, "models": describe_model, "recipes": describe_recipe}
