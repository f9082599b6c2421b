"""The one plugin manager: hookspecs, then the ``mergebench`` entry points, then the registries.

The order follows pluggy's eggsample: create the manager, add the hookspecs, load the
entry-point group (built-ins included — they are entry points of this distribution), then
``check_pending()`` so that a misspelt hook name is an error rather than silence.

Environment:

``MERGEBENCH_DISABLE_PLUGINS``
    comma-separated entry-point names not to load (e.g. a broken third-party plugin).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from mergebench import hookspecs
from mergebench.errors import PluginError
from mergebench.registry import Provider, Registry
from mergebench.specs import MethodSpec, ModelSpec, RecipeSpec, TaskSpec

ENTRY_POINT_GROUP = "mergebench"

_HOOKS: dict[str, tuple[str, type]] = {
    "methods": ("mergebench_register_methods", MethodSpec),
    "tasks": ("mergebench_register_tasks", TaskSpec),
    "models": ("mergebench_register_models", ModelSpec),
    "recipes": ("mergebench_register_recipes", RecipeSpec),
}


@dataclass
class Registries:
    """Everything installed plugins registered, by kind."""

    methods: Registry[MethodSpec] = field(default_factory=lambda: Registry("method"))
    tasks: Registry[TaskSpec] = field(default_factory=lambda: Registry("task"))
    models: Registry[ModelSpec] = field(default_factory=lambda: Registry("model"))
    recipes: Registry[RecipeSpec] = field(default_factory=lambda: Registry("recipe"))
    plugins: list[Provider] = field(default_factory=list)


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in filter(None, (n.strip() for n in os.environ.get("MERGEBENCH_DISABLE_PLUGINS", "").split(","))):
        pm.set_blocked(name)
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a plugin failed to import: name it
            raise PluginError(
                f"a mergebench plugin failed to load: {exc!r}. Block it with "
                "MERGEBENCH_DISABLE_PLUGINS=<entry point name> or fix its installation"
            ) from exc
    return pm


def _providers(pm: pluggy.PluginManager) -> dict[int, Provider]:
    """Provider of every registered plugin object, keyed by ``id(plugin)``."""
    by_id: dict[int, Provider] = {}
    for name, plugin in pm.list_name_plugin():
        if plugin is not None:
            by_id[id(plugin)] = Provider(plugin=name)
    for plugin, dist in pm.list_plugin_distributions():
        by_id[id(plugin)] = Provider(
            plugin=pm.get_name(plugin) or "?",
            distribution=dist.metadata["Name"],
            version=dist.version,
        )
    return by_id


def collect(pm: pluggy.PluginManager, on_error: Callable[[Provider, Exception], None] | None = None) -> Registries:
    """Call every register hook, plugin by plugin, so each spec records which plugin gave it.

    A hook that raises stops the collection, unless ``on_error`` takes the error (listings that
    show what does load: :mod:`mergebench.plugin_survey`).
    """
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}. Hook names must match mergebench.hookspecs exactly") from exc
    registries = Registries()
    providers = _providers(pm)
    registries.plugins = sorted(set(providers.values()), key=lambda p: p.plugin)
    for kind, (hook_name, spec_type) in _HOOKS.items():
        registry: Registry[Any] = getattr(registries, kind)
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order
            provider = providers.get(id(impl.plugin), Provider(plugin=impl.plugin_name))
            try:
                impl.function(register=_register_into(registry, spec_type, provider))
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(provider, exc)
    return registries


def _register_into(registry: Registry[Any], spec_type: type, provider: Provider) -> Callable[[Any], None]:
    def register(spec: Any) -> None:
        if not isinstance(spec, spec_type):
            raise PluginError(
                f"plugin {provider.plugin!r} passed {type(spec).__name__} to the {registry.kind} "
                f"register callback; expected mergebench.specs.{spec_type.__name__}"
            )
        registry.add(spec, provider)

    return register


_cached: Registries | None = None


def registries() -> Registries:
    """The process-wide registries, built on first use."""
    global _cached
    if _cached is None:
        _cached = collect(get_plugin_manager())
    return _cached


def reset() -> None:
    """Forget the cached registries (tests that install or block plugins call this)."""
    global _cached
    _cached = None
