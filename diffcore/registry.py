"""The component registry, on pluggy.

Plugins are found through the entry-point group ``diffcore``; each is loaded and its
``diffcore_register`` hook run in isolation, so a plugin that fails to import, raises in its hook or
registers something invalid is recorded (and shown by ``diffcore plugins``) while everything else
works. Environment variables:

- ``DIFFCORE_STRICT_PLUGINS=1``: any plugin error raises :class:`~diffcore.errors.PluginError`;
- ``DIFFCORE_LOAD_PLUGINS=a,b``: load only the plugins named ``a`` and ``b``, component and command
  plugins alike (empty: none).

The standard components register through exactly this path: they are plugins like any other.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from diffcore import hookspecs
from diffcore.classifier import NoiseClassifier
from diffcore.component import Component, Params, component_errors
from diffcore.data import Dataset
from diffcore.entry_points import (
    COMMAND_GROUP,
    COMPONENT_GROUP,
    LOAD_ENV,
    PLUGIN_FAILURES,
    STRICT_ENV,
    describe_exception,
    distribution,
    entry_points,
    strict_from_env,
    wanted_plugins,
)
from diffcore.errors import PluginError, RegistryError
from diffcore.guidance import Guidance
from diffcore.messages import closest_first, unknown_name_message
from diffcore.model import ScoreModel
from diffcore.objective import Objective
from diffcore.process import ForwardProcess
from diffcore.sampler import Sampler

ENTRY_POINT_GROUP = COMPONENT_GROUP

KINDS: dict[str, type[Component]] = {
    "process": ForwardProcess,
    "model": ScoreModel,
    "objective": Objective,
    "sampler": Sampler,
    "guidance": Guidance,
    "dataset": Dataset,
    "classifier": NoiseClassifier,
}
"""Component kinds and the interface each one implements."""

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Entry:
    """A registered component: its class and the plugin that registered it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str


@dataclass
class PluginInfo:
    """What the registry knows of one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    components: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    errors: list[str] = field(default_factory=list)


def kind_of(cls: type) -> str:
    """The kind of a component class, from the interface it subclasses."""
    kinds = [k for k, base in KINDS.items() if inspect.isclass(cls) and issubclass(cls, base)]
    if len(kinds) != 1:
        expected = ", ".join(f"{b.__module__}.{b.__name__}" for b in KINDS.values())
        raise PluginError(f"{cls!r} does not subclass exactly one diffcore interface ({expected})")
    return kinds[0]






class Registry:
    """Components by kind and name, plus what was learned loading each plugin.

    ``generation`` increases on every change, so caches built from the registry (the spec model)
    know when to rebuild.
    """

    def __init__(self, *, strict: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.plugins: dict[str, PluginInfo] = {}
        self.load_errors: list[str] = []  # errors that belong to no loaded plugin
        self.generation = 0
        self.strict = strict_from_env() if strict is None else strict

    # -- loading ---------------------------------------------------------------------------------

    def load_entry_points(self) -> None:
        """Load every plugin of the ``diffcore`` entry-point group, honouring ``DIFFCORE_LOAD_PLUGINS``."""
        wanted = wanted_plugins()
        found = {ep.name for ep, _ in entry_points(COMMAND_GROUP)}  # a command plugin's name is no typo
        for ep, loaded_from in entry_points(ENTRY_POINT_GROUP):
            found.add(ep.name)
            if wanted is not None and ep.name not in wanted:
                continue
            if loaded_from is not None:
                self._fail(None, f"plugin name {ep.name!r} is declared by both {loaded_from} and "
                           f"{distribution(ep)[0] or '?'}; loaded the one from {loaded_from}. Rename the entry "
                           "point in one of them")
                continue
            info = PluginInfo(ep.name, *distribution(ep))
            try:
                obj = ep.load()
            except PLUGIN_FAILURES as exc:
                self._fail(info, f"failed to import {ep.value!r}: {describe_exception(exc)}")
                continue
            self.register_plugin(obj, ep.name, info=info)
        if wanted:
            for missing in sorted(wanted - found):
                available = closest_first(missing, sorted(found))
                self._fail(None, f"no plugin named {missing!r} in {LOAD_ENV}; "
                           f"installed: {', '.join(available) or 'none'}")

    def register_plugin(self, plugin: object, name: str, *, info: PluginInfo | None = None) -> PluginInfo:
        """Register ``plugin`` (a module or object implementing the hooks) under ``name`` and run
        its ``diffcore_register`` hook. Failures are recorded on the returned :class:`PluginInfo`
        (or raised in strict mode); a plugin whose hook fails registers nothing."""
        info = info or PluginInfo(name)
        if name in self.plugins:
            raise PluginError(f"a plugin named {name!r} is already registered; unregister it first")
        try:
            self.pm.register(plugin, name=name)
        except PLUGIN_FAILURES as exc:
            self._fail(info, f"rejected by pluggy: {describe_exception(exc)}")
            return info
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        caller = self.pm.subset_hook_caller("diffcore_register", remove_plugins=others)
        staged: list[Entry] = []

        def register(cls: type[Any]) -> None:
            staged.append(self._check_component(cls, name))

        try:
            caller(register=register)
        except PLUGIN_FAILURES as exc:
            self.pm.unregister(plugin)
            self._fail(info, f"its diffcore_register hook raised {describe_exception(exc)}")
            return info
        fresh: list[Entry] = []
        for entry in staged:
            existing = self._entries[entry.kind].get(entry.name)
            if existing is None:
                fresh.append(entry)
                continue
            message = (f"{entry.kind} {entry.name!r} is registered by both plugin {existing.plugin!r} and "
                       f"plugin {name!r}; kept the one from {existing.plugin!r}. Rename one of them, or "
                       f"choose plugins with {LOAD_ENV}")
            try:
                self._fail(info, message)
            except PluginError:
                self.pm.unregister(plugin)  # strict: nothing of this plugin is kept
                raise
        self.plugins[name] = info
        for entry in fresh:
            self._entries[entry.kind][entry.name] = entry
            info.components.append((entry.kind, entry.name))
        self.generation += 1
        return info

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and every component it registered."""
        self.plugins.pop(name, None)
        for entries in self._entries.values():
            for comp in [n for n, e in entries.items() if e.plugin == name]:
                del entries[comp]
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.generation += 1

    def _check_component(self, cls: type[Any], plugin: str) -> Entry:
        kind = kind_of(cls)
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(f"{cls.__qualname__} needs a class attribute `name` matching "
                              f"{_NAME_RE.pattern} (got {name!r})")
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
            raise PluginError(f"{kind} {name!r} ({cls.__qualname__}) is abstract; implement {missing}")
        if not (inspect.isclass(cls.Params) and issubclass(cls.Params, Params)):
            raise PluginError(f"{kind} {name!r}: Params must subclass diffcore.component.Params")
        if "type" in cls.Params.model_fields:
            raise PluginError(f"{kind} {name!r}: 'type' is reserved in specs; rename that parameter")
        return Entry(kind, name, cls, plugin)

    def _fail(self, info: PluginInfo | None, message: str) -> None:
        """Record a plugin error (on ``info``, or as a load error of no plugin); raise if strict."""
        text = message
        if info is not None:
            dist = f" ({info.distribution} {info.version})" if info.distribution else ""
            text = f"plugin {info.name!r}{dist}: {message}"
        if self.strict:
            raise PluginError(text + f" [{STRICT_ENV} is set]")
        if info is None:
            self.load_errors.append(text)
        else:
            info.errors.append(text)
            self.plugins.setdefault(info.name, info)

    # -- lookup ----------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """Registered names of ``kind``, sorted."""
        return sorted(self._kind(kind))

    def entries(self, kind: str) -> list[Entry]:
        return [self._kind(kind)[n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> type[Component]:
        """The class registered as ``name`` in ``kind``; an unknown name lists the closest ones."""
        entries = self._kind(kind)
        if name not in entries:
            raise RegistryError(unknown_name_message(kind, name, sorted(entries)))
        return entries[name].cls

    def build(self, kind: str, name: str, **params: Any) -> Component:
        """Instantiate a registered component with validated ``params``; a failure of its
        constructor is reported as the component's :class:`~diffcore.errors.PluginError`."""
        cls = self.get(kind, name)
        with component_errors(cls, "being built from its parameters"):
            return cls(**params)

    def errors(self) -> list[str]:
        """Every plugin load error, in load order."""
        return [e for info in self.plugins.values() for e in info.errors] + self.load_errors

    def __iter__(self) -> Iterator[Entry]:
        for kind in KINDS:
            yield from self.entries(kind)

    def _kind(self, kind: str) -> dict[str, Entry]:
        if kind not in self._entries:
            raise RegistryError(unknown_name_message("kind", kind, list(KINDS)))
        return self._entries[kind]





_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _default
    if _default is None:
        registry = Registry()
        registry.load_entry_points()
        _default = registry
    return _default


def reset_registry() -> None:
    """Forget the process-wide registry (the next :func:`get_registry` reloads entry points)."""
    global _default
    _default = None
