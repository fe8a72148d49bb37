"""Command plugins: subcommands contributed to ``diffcore`` through the ``diffcore.commands``
entry-point group and the :func:`~diffcore.hookspecs.diffcore_add_commands` hook.

Each plugin is loaded and its hook called in isolation: a plugin that fails to import, is rejected by
pluggy, implements no hook or whose hook raises keeps none of its commands and is recorded on its
:class:`CommandPlugin` (``diffcore plugins`` shows it); the command line keeps working. With
``DIFFCORE_STRICT_PLUGINS=1`` the first such error raises :class:`~diffcore.errors.PluginError`.

This module imports neither torch nor the component registry: it runs for ``diffcore --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from diffcore import hookspecs
from diffcore.entry_points import (
    COMMAND_GROUP,
    PLUGIN_FAILURES,
    STRICT_ENV,
    describe_exception,
    distribution,
    entry_points,
    strict_from_env,
    wanted_plugins,
)
from diffcore.errors import PluginError, UsageError
from diffcore.threads import parse_threads

ENTRY_POINT_GROUP = COMMAND_GROUP

Subparsers = argparse._SubParsersAction  # the type `add_subparsers` returns


@dataclass
class CommandPlugin:
    """What loading one command plugin gave: the commands it added, or its errors."""

    name: str
    distribution: str | None = None
    version: str | None = None
    commands: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def load_command_plugins(subparsers: Subparsers[argparse.ArgumentParser], *,
                         strict: bool | None = None) -> list[CommandPlugin]:
    """Load every plugin of the ``diffcore.commands`` group (sorted by name; those named in
    ``DIFFCORE_LOAD_PLUGINS`` where it is set) and let each add its commands to ``subparsers``; an
    entry-point name declared by two distributions loads the first."""
    strict = strict_from_env() if strict is None else strict
    plugins: list[CommandPlugin] = []
    wanted = wanted_plugins()
    for ep, loaded_from in entry_points(ENTRY_POINT_GROUP):
        if wanted is not None and ep.name not in wanted:
            continue
        info = CommandPlugin(ep.name, *distribution(ep))
        plugins.append(info)
        if loaded_from is not None:
            _fail(info, f"the name is also declared by {loaded_from}, whose plugin was loaded; rename "
                  "the entry point in one of them", strict)
            continue
        try:
            plugin = ep.load()
        except PLUGIN_FAILURES as exc:
            _fail(info, f"failed to import {ep.value!r}: {describe_exception(exc)}", strict)
            continue
        add_commands(subparsers, plugin, info, strict=strict)
    return plugins


def add_commands(subparsers: Subparsers[argparse.ArgumentParser], plugin: object, info: CommandPlugin, *,
                 strict: bool = False) -> CommandPlugin:
    """Call ``plugin``'s ``diffcore_add_commands`` hook on ``subparsers``, in isolation; records the
    commands it added on ``info``, or the error (and removes what it added)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(plugin, name=info.name)
    except PLUGIN_FAILURES as exc:
        _fail(info, f"rejected by pluggy: {describe_exception(exc)}", strict)
        return info
    if not pm.hook.diffcore_add_commands.get_hookimpls():
        _fail(info, "implements no diffcore_add_commands hook; mark the function with @diffcore.hookimpl", strict)
        return info
    before, actions = set(subparsers.choices), len(subparsers._choices_actions)
    try:
        pm.hook.diffcore_add_commands(subparsers=subparsers)
    except PLUGIN_FAILURES as exc:
        for name in set(subparsers.choices) - before:
            del subparsers.choices[name]
        del subparsers._choices_actions[actions:]
        _fail(info, f"its diffcore_add_commands hook raised {describe_exception(exc)}", strict)
        return info
    info.commands = [name for name in subparsers.choices if name not in before]
    return info


def threads_argument(text: str) -> int | str:
    """argparse ``type`` of ``--threads``: a count from 1 to 1024 or ``auto`` (:mod:`diffcore.threads`),
    for the built-in commands and command plugins alike."""
    try:
        value = parse_threads(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert value is not None
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (a 4000-digit one is refused before it is
    converted). For every integer option of the built-in commands and of command plugins::

        parser.add_argument("--steps", type=bounded_int(1, MAX_STEPS))
    """
    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-")
        if not digits.isdigit() or len(digits) > len(str(high)) + 1:
            if digits.isdigit():
                shown = text if len(text) <= 24 else f"{text[:24]}... ({len(digits)} digits)"
                raise argparse.ArgumentTypeError(f"{shown} is out of range: use {low} to {high}")
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low} to {high}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def as_rows(plugins: list[CommandPlugin]) -> list[dict[str, Any]]:
    """JSON rows of ``diffcore plugins --json`` (``commands``)."""
    return [{"name": p.name, "distribution": p.distribution, "version": p.version, "commands": p.commands,
             "errors": p.errors} for p in plugins]


def _fail(info: CommandPlugin, message: str, strict: bool) -> None:
    dist = f" ({info.distribution} {info.version})" if info.distribution else ""
    text = f"command plugin {info.name!r}{dist}: {message}"
    if strict:
        raise PluginError(text + f" [{STRICT_ENV} is set]")
    info.errors.append(text)
