"""Plugins as plain text that stays readable at any width: one block per method, task, model or recipe.

Rich tables cut cells to "scaling=0…" once a terminal (or a pipe, which Rich treats as 80 columns)
is narrower than the table; these blocks wrap between words instead and never cut a name, a value
or an address. Shared with ``mergebench plugins NAME`` (:mod:`~mergebench.cli.plugin_detail`) and
``mergebench merge --help``.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any, Iterable

from mergebench.specs import DataNeed, HyperParam

INDENT = "    "

DATA_NEEDS = {
    DataNeed.NONE: "only the checkpoints",
    DataNeed.VALIDATION: "surrogate tasks to tune its grid on, with --mb-search grid or halving",
    DataNeed.TRAINING_SAMPLES: "samples of each expert's training data for its statistics, mergebench merge --samples",
    DataNeed.GRADIENTS: "per-sample gradients of each expert on those samples",
}


def width() -> int:
    """The terminal's width, else ``$COLUMNS``, else 80 (a pipe)."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def wrap(text: str, indent: str = INDENT, hanging: str = "", cols: int | None = None) -> list[str]:
    """``text`` filled to the width; names, values and URLs are never split."""
    return textwrap.wrap(text, width=cols or width(), initial_indent=indent, subsequent_indent=indent + hanging,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]


def value(v: Any) -> str:
    """A value as typed after ``--param KEY=`` (strings without quotes)."""
    return v if isinstance(v, str) else repr(v)


def values(items: Iterable[Any]) -> str:
    return ", ".join(value(v) for v in items)


def param_summary(hp: HyperParam) -> str:
    """``density=0.2 (grid of 3)``: what a listing line shows of a hyperparameter."""
    return f"{hp.name}={value(hp.default)}" + (f" (grid of {len(hp.grid)})" if hp.grid else "")


def param_range(hp: HyperParam) -> str:
    if hp.choices:
        return values(hp.choices)
    if hp.low is not None and hp.high is not None:
        return f"{value(hp.low)} to {value(hp.high)}"
    if hp.low is not None:
        return f"at least {value(hp.low)}"
    if hp.high is not None:
        return f"at most {value(hp.high)}"
    return ""


def data_needs(spec) -> tuple[list[str], str]:
    """A method's data needs and, if they cannot be derived, why (its class is imported to derive them)."""
    try:
        return [d.value for d in spec.data], ""
    except ImportError as exc:
        return [], f"? (cannot import {spec.impl}: {exc})"
    except Exception as exc:  # e.g. a declaration that disagrees with the class (PluginError)
        return [], f"? ({exc})"


def suites(spec) -> str:
    return ", ".join(sorted(spec.suites)) or "none"


def provider_text(provider) -> str:
    return f"plugin {provider.plugin}" + (f", {provider}" if provider.distribution else "")


def method_block(spec, verbose: bool = False) -> list[str]:
    needs, error = data_needs(spec)
    tags = [spec.family, "data: " + (", ".join(needs) or error)] + (["opt-in"] if spec.opt_in else [])
    lines = wrap(f"{spec.name}  ({'; '.join(tags)})", indent="", hanging=INDENT)
    lines += wrap(spec.summary) if spec.summary else []
    params = []
    for hp in spec.hyperparams:
        source = getattr(hp, "source", "") if verbose else ""  # -v: where the default comes from
        params += [INDENT + param_summary(hp)] + (wrap(f"default from: {source}", indent=INDENT * 2) if source else [])
    return lines + (params or [INDENT + "no hyperparameters"])


def task_block(spec) -> list[str]:
    metric = f"{spec.metric} {'↑' if spec.higher_is_better else '↓'}"
    role = [] if spec.role == "test" else [f"{spec.role} surrogate"]
    lines = wrap(f"{spec.name}  ({'; '.join([spec.domain, metric, *role, 'suites ' + suites(spec)])})",
                 indent="", hanging=INDENT)
    lines += wrap(spec.summary) if spec.summary else []
    return lines + (wrap(f"stands in for: {spec.stand_in_for}", hanging="  ") if spec.stand_in_for else [])


def model_block(spec, verbose: bool = False) -> list[str]:
    tags = [spec.family, spec.size, "instruct" if spec.instruct else "base", "suites " + suites(spec)]
    lines = wrap(f"{spec.name}  ({'; '.join(tags)})", indent="", hanging=INDENT)
    lines += wrap(spec.summary) if spec.summary else []
    lines += wrap(f"base: {base_source(spec)}", hanging="  ")
    if verbose:
        experts = [f"{e.domain}: {expert_source(e)}" for e in (*spec.experts, *([spec.mtl] if spec.mtl else []))]
        return lines + [INDENT + "experts:"] + [line for e in experts for line in wrap(e, indent=INDENT * 2, hanging="  ")]
    domains = ", ".join(spec.domains) or "none"
    return lines + wrap(f"experts: {domains}" + ("; multi-task baseline: mtl" if spec.mtl else ""), hanging="  ")


def recipe_block(spec) -> list[str]:
    lines = wrap(f"{spec.name}  ({spec.domain}; suites {suites(spec)})", indent="", hanging=INDENT)
    lines += wrap(spec.summary) if spec.summary else []
    return lines + (wrap(f"stands in for: {spec.stand_in_for}", hanging="  ") if spec.stand_in_for else [])


def base_source(spec) -> str:
    if spec.hub_id:
        return f"hub {spec.hub_id}" + (f"@{spec.revision}" if spec.revision else "")
    return f"built by {spec.impl}" if spec.impl else spec.source


def expert_source(expert) -> str:
    if expert.hub_id:
        where = f"hub {expert.hub_id}" + (f"@{expert.revision}" if expert.revision else "")
        return where + (f" (training data: recipe {expert.recipe})" if expert.recipe else "")
    return f"recipe {expert.recipe}"


BLOCKS = (("Merge methods", "methods", method_block), ("Tasks", "tasks", task_block),
          ("Models", "models", model_block), ("Finetuning recipes", "recipes", recipe_block))


def listing(registries, verbose: bool = False) -> list[str]:
    """Every installed plugin and what it registered, grouped by kind and by the plugin that provides it."""
    lines = ["Installed plugins"]
    pad = max((len(p.plugin) for p in registries.plugins), default=0)
    lines += [f"{INDENT}{p.plugin:<{pad}}  {p}" for p in registries.plugins] or [INDENT + "none"]
    for title, kind, block in BLOCKS:
        registry = getattr(registries, kind)
        by_provider: dict[Any, list] = {}
        for entry in registry.entries():
            by_provider.setdefault(entry.provider, []).append(entry.spec)
        lines += ["", f"{title} ({len(registry)}; `mergebench plugins NAME` shows one in full)"]
        for provider, specs in by_provider.items():
            lines += ["", f"-- from {provider_text(provider)}"]
            for spec in specs:
                lines += ["", *(block(spec, verbose) if kind in ("models", "methods") else block(spec))]
    return lines
