"""The registries as far as they load, for the commands that describe plugins.

A run needs every plugin, so :func:`mergebench.plugin_manager.registries` stops at the first that
fails and names it. ``mergebench plugins`` and ``mergebench merge --help`` only describe what is
installed, and a broken third-party plugin must not hide the built-in methods from the user who is
trying to find out what broke: when the usual load fails, each entry point loads on its own, what
imports registers, and what did not is reported with the fix.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field

import pluggy

from mergebench import plugin_manager
from mergebench.registry import Provider


@dataclass
class Survey:
    registries: plugin_manager.Registries
    problems: list[str] = field(default_factory=list)
    """One sentence per plugin that did not load or register, naming it and how to block it."""


def survey() -> Survey:
    """The process's registries when every plugin loads (the usual case), else what loads plugin by plugin."""
    try:
        return Survey(plugin_manager.registries())
    except Exception:  # whatever a plugin raised: find out which one, below
        return _plugin_by_plugin()


def _plugin_by_plugin() -> Survey:
    pm = plugin_manager.get_plugin_manager(load_entrypoints=False)
    problems: list[str] = []
    names = sorted({ep.name for ep in importlib.metadata.entry_points(group=plugin_manager.ENTRY_POINT_GROUP)})
    for name in names:
        try:
            pm.load_setuptools_entrypoints(plugin_manager.ENTRY_POINT_GROUP, name=name)
        except Exception as exc:  # any error of a plugin's import is that plugin's, not ours
            problems.append(f"plugin {name!r} failed to import: {exc!r}{_block(name)}")
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:  # a misspelt hook: leave that plugin out, check the rest
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            pm.unregister(exc.plugin)
            problems.append(f"plugin {name!r} was left out: {exc}; hook names must match mergebench.hookspecs{_block(name)}")

    def failed(provider: Provider, exc: Exception) -> None:
        problems.append(f"plugin {provider.plugin!r} ({provider}) failed while registering: {exc}{_block(provider.plugin)}")

    return Survey(plugin_manager.collect(pm, on_error=failed), problems)


def _block(name: str) -> str:
    return f" (fix its installation, or block it with MERGEBENCH_DISABLE_PLUGINS={name})"
