"""The pluggy registry: isolation of broken plugins, duplicates, strict mode, lookups."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from conftest import load_plugins, write_distribution

import diffcore
from diffcore import PluginError, Registry, RegistryError, hookimpl
from diffcore.process import LinearGaussianProcess
from diffcore.sampler import Sampler
from diffcore.testing import plugin_registered


def plugin_module(name: str, *classes: type, raise_after: int | None = None) -> types.ModuleType:
    """An in-memory plugin module registering ``classes`` (and raising after ``raise_after``)."""
    module = types.ModuleType(name)

    @hookimpl
    def diffcore_register(register):  # type: ignore[no-untyped-def]
        for i, cls in enumerate(classes):
            if raise_after is not None and i == raise_after:
                raise RuntimeError("boom in the hook")
            register(cls)

    module.diffcore_register = diffcore_register  # type: ignore[attr-defined]
    return module


class Shifted(LinearGaussianProcess):
    """alpha = 1, sigma = t: the simplest linear-Gaussian process."""

    name = "shifted"

    def alpha(self, t):  # type: ignore[no-untyped-def]
        return t * 0 + 1

    def sigma(self, t):  # type: ignore[no-untyped-def]
        return t


class Other(Shifted):
    name = "other"


def test_standard_plugins_come_through_entry_points() -> None:
    registry = Registry()
    registry.load_entry_points()
    assert {"processes", "models", "samplers"} <= set(registry.plugins)
    assert registry.plugins["processes"].distribution == "diffcore-processes"
    assert {"ve", "vp", "subvp"} <= set(registry.names("process"))
    assert {"gmm", "mlp", "unet"} <= set(registry.names("model"))
    assert {"euler_maruyama", "probability_flow"} <= set(registry.names("sampler"))
    assert registry.errors() == []


def test_kind_comes_from_the_interface_and_name_from_the_class() -> None:
    registry = Registry()
    info = registry.register_plugin(plugin_module("p", Shifted), "p")
    assert info.components == [("process", "shifted")]
    assert registry.get("process", "shifted") is Shifted


def test_hook_that_raises_registers_nothing_and_is_reported() -> None:
    registry = Registry()
    registry.register_plugin(plugin_module("bad", Shifted, Other, raise_after=1), "bad")
    registry.register_plugin(plugin_module("good", Other), "good")
    assert "shifted" not in registry.names("process")  # rolled back, not half-registered
    assert registry.names("process") == ["other"]
    [error] = registry.errors()
    assert "plugin 'bad'" in error and "RuntimeError: boom in the hook" in error


def test_duplicate_name_names_both_plugins_and_keeps_the_first() -> None:
    registry = Registry()
    registry.register_plugin(plugin_module("first", Shifted), "first")
    registry.register_plugin(plugin_module("second", Shifted, Other), "second")
    assert registry.get("process", "shifted") is Shifted
    assert registry.entries("process")[1].plugin == "first"
    assert "other" in registry.names("process")  # the rest of the second plugin still loads
    [error] = registry.errors()
    assert "'first'" in error and "'second'" in error and "'shifted'" in error


def test_strict_mode_raises_the_same_message() -> None:
    lenient = Registry(strict=False)
    lenient.register_plugin(plugin_module("first", Shifted), "first")
    lenient.register_plugin(plugin_module("second", Shifted), "second")
    strict = Registry(strict=True)
    strict.register_plugin(plugin_module("first", Shifted), "first")
    with pytest.raises(PluginError) as exc:
        strict.register_plugin(plugin_module("second", Shifted), "second")
    assert lenient.errors()[0] in str(exc.value)


def test_invalid_components_are_rejected_with_reasons() -> None:
    class NoName(Shifted):
        name = "Bad Name"

    class Abstract(Sampler):
        name = "abstract"

    for cls, reason in [(NoName, "matching"), (Abstract, "is abstract; implement run"), (int, "subclass")]:
        registry = Registry()
        registry.register_plugin(plugin_module("p", cls), "p")
        assert reason in registry.errors()[0], registry.errors()


def test_pluggy_rejects_a_hook_with_a_wrong_signature() -> None:
    module = types.ModuleType("wrong")

    @hookimpl
    def diffcore_register(register, extra):  # type: ignore[no-untyped-def]
        pass

    module.diffcore_register = diffcore_register  # type: ignore[attr-defined]
    registry = Registry()
    registry.register_plugin(module, "wrong")
    assert "extra" in registry.errors()[0]


def test_unknown_name_lists_closest_first() -> None:
    registry = Registry()
    registry.load_entry_points()
    with pytest.raises(RegistryError) as exc:
        registry.get("process", "vpp")
    message = str(exc.value)
    assert "did you mean 'vp'?" in message
    assert message.index("vp,") < message.index("ve")
    with pytest.raises(RegistryError, match="no kind named 'samplr'; did you mean 'sampler'"):
        registry.names("samplr")


def test_unregister_removes_components_and_bumps_generation() -> None:
    registry = Registry()
    registry.register_plugin(plugin_module("p", Shifted), "p")
    generation = registry.generation
    registry.unregister_plugin("p")
    assert "shifted" not in registry.names("process") and registry.generation > generation


def test_plugin_registered_context_manager() -> None:
    registry = Registry()
    with plugin_registered(plugin_module("p", Shifted), "p", registry=registry):
        assert "shifted" in registry.names("process")
    assert "shifted" not in registry.names("process")
    with pytest.raises(PluginError, match="boom"), plugin_registered(
            plugin_module("q", Shifted, raise_after=0), "q", registry=registry):
        pass


def test_diffcore_plugin_fixture(diffcore_plugin) -> None:  # type: ignore[no-untyped-def]
    diffcore_plugin(plugin_module("fixture_plugin", Shifted))
    assert "shifted" in diffcore.get_registry().names("process")


def test_fixture_unregistered_afterwards() -> None:
    assert "shifted" not in diffcore.get_registry().names("process")




def test_broken_and_duplicate_plugins_from_entry_points(broken_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_plugins(monkeypatch, broken_site)
    monkeypatch.delenv("DIFFCORE_STRICT_PLUGINS", raising=False)
    registry = Registry()
    registry.load_entry_points()
    errors = "\n".join(registry.errors())
    assert "plugin 'broken' (diffcore-broken 1.0): failed to import" in errors
    assert "frobnicate" in errors
    assert "registered by both plugin 'processes' and plugin 'zz_dup'" in errors
    assert registry.get("process", "vp").__module__ == "diffcore_processes.vp"


def test_load_plugins_env_selects_entry_points(broken_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(broken_site))  # the variable below chooses what loads
    monkeypatch.setenv("DIFFCORE_LOAD_PLUGINS", "processes,samplers")
    registry = Registry()
    registry.load_entry_points()
    assert sorted(registry.plugins) == ["processes", "samplers"] and registry.errors() == []
    monkeypatch.setenv("DIFFCORE_LOAD_PLUGINS", "")
    registry = Registry()
    registry.load_entry_points()
    assert registry.plugins == {} and registry.names("process") == []
    monkeypatch.setenv("DIFFCORE_LOAD_PLUGINS", "procesess")
    registry = Registry()
    registry.load_entry_points()
    assert "no plugin named 'procesess'" in registry.errors()[0]
    assert "installed: processes" in registry.errors()[0]


def test_entry_point_name_taken_by_two_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = "from diffcore import hookimpl\n\n@hookimpl\ndef diffcore_register(register):\n    pass\n"
    write_distribution(tmp_path, "diffcore-aaa", "1.0", {"samplers": "aaa_mod"}, {"aaa_mod": source})
    load_plugins(monkeypatch, tmp_path)
    registry = Registry(strict=False)
    registry.load_entry_points()
    [error] = registry.errors()
    assert "plugin name 'samplers' is declared by both diffcore-aaa and diffcore-samplers" in error
    assert registry.plugins["samplers"].distribution == "diffcore-aaa"  # sorted by distribution name
    assert "probability_flow" not in registry.names("sampler")  # hidden, and now said so


def test_strict_duplicate_registers_nothing_of_the_plugin() -> None:
    registry = Registry(strict=True)
    registry.register_plugin(plugin_module("first", Shifted), "first")
    with pytest.raises(PluginError, match="registered by both"):
        registry.register_plugin(plugin_module("second", Other, Shifted), "second")
    assert registry.names("process") == ["shifted"] and "second" not in registry.plugins


def test_plugin_registered_accepts_an_already_loaded_plugin() -> None:
    import diffcore_processes
    registry = Registry()
    registry.load_entry_points()
    with plugin_registered(diffcore_processes, registry=registry) as info:
        assert info.name == "processes"
    assert "vp" in registry.names("process")  # left loaded


def test_python_construction_errors_name_the_component_fields() -> None:
    from diffcore.errors import SpecError
    with pytest.raises(SpecError) as exc:
        diffcore.get_registry().build("sampler", "euler_maruyama", stpes=3)
    assert "did you mean 'steps'? allowed fields: steps, denoise_last" in str(exc.value)
    assert exc.value.problems == [("stpes", "unknown field 'stpes'; did you mean 'steps'? "
                                   "allowed fields: steps, denoise_last")]
