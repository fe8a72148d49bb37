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

    Raises :class:`~diffcore.errors.PluginError` if the plugin failed to register anything it
    declared (its errors are in the message), so a broken plugin fails the test that uses it.
    """
    registry = registry or get_registry()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    info = registry.register_plugin(plugin, name)
    try:
        if info.errors:
            raise PluginError("; ".join(info.errors))
        yield info
    finally:
        registry.unregister_plugin(name)


__all__ = ["plugin_registered"]
