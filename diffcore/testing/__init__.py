"""Testing support for plugin authors.

- :func:`plugin_registered`: register a plugin in-process for the duration of a ``with`` block;
  the ``diffcore_plugin`` pytest fixture (loaded automatically when diffcore is installed) does the
  same for one test;
- :mod:`diffcore.testing.conformance`: suites every process and sampler should pass, checked
  against closed forms and the analytic Gaussian mixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from diffcore.errors import PluginError
from diffcore.registry import PluginInfo, Registry, get_registry


@contextmanager
def plugin_registered(plugin: object, name: str | None = None, *,
                      registry: Registry | None = None) -> Iterator[PluginInfo]:
    """Register ``plugin`` (a module or object with a ``diffcore_register`` hook), yield its
    :class:`~diffcore.registry.PluginInfo`, and unregister it afterwards.

    A plugin already registered (say, loaded from its installed entry point) is left as it is and
    its info yielded, so a plugin's tests pass whether or not the plugin is installed. Raises
    :class:`~diffcore.errors.PluginError` if the plugin failed to register anything it declared
    (its errors are in the message), so a broken plugin fails the test that uses it.
    """
    registry = registry or get_registry()
    if registry.pm.is_registered(plugin):  # already loaded, e.g. from its installed entry point
        loaded = registry.pm.get_name(plugin)
        if loaded is not None and loaded in registry.plugins:
            yield registry.plugins[loaded]
            return
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    info = registry.register_plugin(plugin, name)
    try:
        if info.errors:
            raise PluginError("; ".join(info.errors))
        yield info
    finally:
        registry.unregister_plugin(name)


__all__ = ["plugin_registered"]
