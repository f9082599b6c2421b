"""Plugin registries: registration through pluggy hooks, provenance, and the errors users read."""

from __future__ import annotations

import pytest

from mergebench import hookimpl, plugin_manager
from mergebench.errors import PluginError, UnknownNameError, UsageError
from mergebench.specs import DataNeed, HyperParam, MethodSpec, TaskSpec


def collect_with(*extra_plugins, load_entrypoints: bool = True):
    pm = plugin_manager.get_plugin_manager(load_entrypoints=load_entrypoints)
    for i, plugin in enumerate(extra_plugins):
        pm.register(plugin, name=f"test-plugin-{i}")
    return plugin_manager.collect(pm)


class ExtraMethod:
    @hookimpl
    def mergebench_register_methods(self, register):
        register(MethodSpec(name="my_method", impl="builtins:len", family="other"))


def test_builtins_register_through_the_entry_point_group():
    registries = collect_with()
    entry = registries.methods.entry("soup")
    assert entry.provider.plugin == "builtin-methods"
    assert entry.provider.distribution == "mergebench"
    assert {"smollm2-135m-instruct", "gemma-2-2b-it", "llama-3.1-8b", "tiny-llama"} <= set(registries.models.names())
    assert "gsm8k_mini" in registries.tasks


def test_a_plugin_object_adds_a_method_and_is_credited():
    registries = collect_with(ExtraMethod())
    assert registries.methods.get("my_method").family == "other"
    assert registries.methods.entry("my_method").provider.plugin == "test-plugin-0"


def test_unknown_name_lists_known_names_and_suggests_the_closest():
    registries = collect_with()
    with pytest.raises(UnknownNameError) as info:
        registries.methods.get("task_arithmetc")
    message = str(info.value)
    assert "unknown method 'task_arithmetc'; did you mean 'task_arithmetic'?" in message
    assert "soup" in message and "Known methods:" in message


def test_two_plugins_registering_the_same_name_is_an_error_naming_both():
    with pytest.raises(PluginError, match=r"method 'my_method' is registered twice: by plugin 'test-plugin-0'.*'test-plugin-1'"):
        collect_with(ExtraMethod(), ExtraMethod())


def test_a_misspelt_hook_fails_loudly():
    class Misspelt:
        @hookimpl
        def mergebench_register_method(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="mergebench_register_method"):
        collect_with(Misspelt())


def test_registering_the_wrong_spec_type_names_the_expected_type():
    class Wrong:
        @hookimpl
        def mergebench_register_methods(self, register):
            register(TaskSpec(name="x", impl="a:b", domain="math"))

    with pytest.raises(PluginError, match="passed TaskSpec to the method register callback; expected mergebench.specs.MethodSpec"):
        collect_with(Wrong())


def test_disabling_an_entry_point_by_environment(monkeypatch):
    monkeypatch.setenv("MERGEBENCH_DISABLE_PLUGINS", "builtin-methods")
    registries = collect_with()
    assert "soup" not in registries.methods
    assert "gsm8k_mini" in registries.tasks


def test_hyperparameters_validate_with_clear_messages():
    spec = collect_with().methods.get("task_arithmetic")
    assert spec.resolve_params({}) == {"scaling": 0.3}
    assert spec.resolve_params({"scaling": "0.5"}) == {"scaling": 0.5}
    assert spec.grid_size() == 10
    with pytest.raises(UsageError, match=r"scaling=-1.0 is out of range \[0.0, 10.0\]"):
        spec.resolve_params({"scaling": -1})
    with pytest.raises(UsageError, match="scaling='big' is not a float"):
        spec.resolve_params({"scaling": "big"})
    with pytest.raises(UsageError, match="method 'task_arithmetic' has no hyperparameter 'scale'; did you mean 'scaling'"):
        spec.resolve_params({"scale": 0.5})
    with pytest.raises(UsageError, match="it takes none"):  # soup takes `embeddings` since the study-code form
        collect_with().methods.get("model_stock").resolve_params({"scaling": 1})


# What the built-in specs declared by hand before data needs were derived from the classes.
DECLARED_BY_HAND = {
    "soup": ("none",), "model_stock": ("none",), "linear": ("none",), "mergekit_gta": ("none",),
    "fisher": ("training_samples", "gradients"), "regmean": ("training_samples", "validation"),
    "localize_stitch": ("training_samples",),
    **{name: ("validation",) for name in ("task_arithmetic", "ties", "dare", "consensus", "dataless_localize_stitch",
                                         "slerp", "della", "breadcrumbs", "tsv", "iso_c", "iso_cts")},
}


def test_data_needs_follow_from_the_class_and_the_grids():
    methods = collect_with().methods
    assert {name: tuple(d.value for d in methods.get(name).data) for name in methods.names()} == DECLARED_BY_HAND


def test_a_declared_data_need_is_accepted_when_it_agrees_and_an_error_when_it_does_not():
    grid = (HyperParam("scaling", 1.0, grid=(0.5, 1.0)),)
    agreeing = MethodSpec(name="m", impl="mergebench_builtins.methods.task_arithmetic:TaskArithmetic",
                          hyperparams=grid, data=(DataNeed.VALIDATION,))
    assert agreeing.data == (DataNeed.VALIDATION,)
    forgot_gradients = MethodSpec(name="m", impl="mergebench_builtins.methods.fisher:Fisher",
                                  hyperparams=(HyperParam("samples", 4),), data=(DataNeed.TRAINING_SAMPLES,))
    with pytest.raises(PluginError, match=r"method 'm' declares data=\(training_samples\) but needs "
                                          r"\(training_samples, gradients\): .*drop data= from its MethodSpec"):
        _ = forgot_gradients.data


def test_plugins_lists_a_method_whose_class_cannot_be_imported(monkeypatch, capsys):
    from mergebench.cli import main

    class Broken:
        @hookimpl
        def mergebench_register_methods(self, register):
            register(MethodSpec(name="broken", impl="no_such_module_here:Merge"))

    monkeypatch.setattr(plugin_manager, "_cached", collect_with(Broken()))
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "broken" in line)
    assert "? (cannot import no_such_module_here:Merge: No module named 'no_such_module_here')" in row
