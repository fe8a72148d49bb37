"""Finding plugins through entry points, shared by the component registry (group ``diffcore``) and
the command plugins (group ``diffcore.commands``). Imports neither torch nor any component, so the
command line's ``--help`` can use it.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from importlib import metadata

DEBUG_ENV = "DIFFCORE_DEBUG"
"""Set (to anything but ``0``) to make the command line print the traceback behind an error."""
STRICT_ENV = "DIFFCORE_STRICT_PLUGINS"
"""Set (to anything but ``0``) to make every plugin error fatal."""
LOAD_ENV = "DIFFCORE_LOAD_PLUGINS"
"""Comma-separated entry-point names: load only the plugins of these names, component and command
plugins alike (set but empty: none). Unset: every installed plugin."""
COMPONENT_GROUP = "diffcore"
"""The entry-point group of component plugins (:mod:`diffcore.registry`)."""
COMMAND_GROUP = "diffcore.commands"
"""The entry-point group of command plugins (:mod:`diffcore.commands`)."""


PLUGIN_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt, GeneratorExit)
"""What a plugin may raise at import, in a hook or in a component call that is reported as its
error instead of ending the program: every exception, ``SystemExit`` too (a plugin calling
``sys.exit(0)`` at import must not make ``diffcore validate`` exit 0 without a word)."""


def strict_from_env() -> bool:
    """Whether :data:`STRICT_ENV` asks for plugin errors to raise."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def wanted_plugins() -> set[str] | None:
    """The plugin names :data:`LOAD_ENV` selects, or ``None`` (unset: all)."""
    if LOAD_ENV not in os.environ:
        return None
    return {n.strip() for n in os.environ[LOAD_ENV].split(",") if n.strip()}


def distribution(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    """The name and version of the distribution declaring ``ep`` (``None`` where unknown)."""
    dist = getattr(ep, "dist", None)
    return (str(dist.metadata["Name"]), str(dist.version)) if dist is not None else (None, None)


def entry_points(group: str) -> Iterator[tuple[metadata.EntryPoint, str | None]]:
    """The entry points of ``group``, sorted by name, each with ``None``, or, when another
    distribution declared the same name first (only that one is loaded), the name of that
    distribution. A name a distribution declares twice is yielded once."""
    def dist_name(ep: metadata.EntryPoint) -> str:
        return distribution(ep)[0] or "?"

    first: dict[str, str] = {}  # entry-point name -> the distribution that declared it first
    for ep in sorted(metadata.entry_points(group=group), key=lambda ep: (ep.name, dist_name(ep))):
        if ep.name not in first:
            first[ep.name] = dist_name(ep)
            yield ep, None
        elif first[ep.name] != dist_name(ep):
            yield ep, first[ep.name]


def describe_exception(exc: BaseException) -> str:
    """``RuntimeError: message at file.py:12``: an exception and where it was raised, for plugin errors."""
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    text = str(exc)
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}"
