"""The hooks a diffcore plugin may implement.

A plugin is any module or object that implements these hooks with the :data:`diffcore.hookimpl`
marker. Component plugins (:func:`diffcore_register`) are found through the ``diffcore`` entry-point
group (or registered in-process with :meth:`diffcore.registry.Registry.register_plugin`); command
plugins (:func:`diffcore_add_commands`) through the ``diffcore.commands`` group (see
:mod:`diffcore.commands`). This module imports neither torch nor the rest of diffcore.
"""

from __future__ import annotations

import argparse
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
    ``objective``, ``sampler``, ``guidance``, ``dataset``, ``classifier``) comes from the interface
    it subclasses and its name from its ``name`` class attribute. If the hook raises, nothing of this
    plugin is registered and the error is recorded (reported by ``diffcore plugins``); other plugins are unaffected.
    """


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


@hookspec
def diffcore_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the plugin's subcommands to the ``diffcore`` command line.

    Implemented by command plugins, found through the entry-point group ``diffcore.commands`` (not
    ``diffcore``: component plugins import torch when they load, and ``diffcore --help`` and
    ``diffcore --version`` answer without importing torch). Called every time the command line builds
    its parser, after the built-in commands are added, each plugin in isolation.

    ``subparsers`` is the subparsers action of the ``diffcore`` parser: call
    ``subparsers.add_parser(name, help=...)``, add the command's arguments to the parser it returns and
    ``set_defaults(func=run)``, where ``run(args: argparse.Namespace) -> int`` does the work and
    returns the exit status.

    The module holding this hook is imported to build the parser, for ``--help`` too: it must import
    nothing heavy at import time (no torch, numpy or diffcore modules other than ``diffcore.hookimpl``
    and :mod:`diffcore.errors`); import them inside ``run``. A :class:`~diffcore.errors.DiffcoreError`
    raised by ``run`` exits with status 2 and its message as one paragraph on stderr, as for the
    built-in commands.

    If the module fails to import or this hook raises (a command name already taken, by a built-in
    command or another plugin, raises), the commands it added are removed and the error is recorded:
    ``diffcore plugins`` shows it, the other commands work, and ``DIFFCORE_STRICT_PLUGINS=1`` makes it
    fatal.
    """
