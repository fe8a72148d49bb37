"""The hooks a diffcore plugin may implement.

A plugin is any module or object, found through the ``diffcore`` entry-point group (or registered
in-process with :meth:`diffcore.registry.Registry.register_plugin`), that implements these hooks
with the :data:`diffcore.hookimpl` marker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "diffcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


@hookspec
def diffcore_register(register: Callable[[type[Any]], None]) -> None:
    """Register the plugin's components.

    Called once per plugin when the registry loads it (each plugin in isolation). Call
    ``register(SomeClass)`` for every component class: its kind (``process``, ``model``,
    ``objective``, ``sampler``, ``guidance``) comes from the interface it subclasses and its name
    from its ``name`` class attribute. If the hook raises, nothing of this plugin is registered and
    the error is recorded (reported by ``diffcore plugins``); other plugins are unaffected.
    """
