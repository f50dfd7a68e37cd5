"""Plugin manager: loads backends from the ``snaptree`` entry-point group.

Our own backends are found there exactly like a third party's.  The
environment variable ``SNAPTREE_PLUGINS`` narrows which entry points load: a
comma-separated list of entry-point names (``raw,btrfs``); empty loads none.
A broken plugin (an entry point that fails to load, ``plugin`` a class
rather than an instance, a ``snaptree_backends`` that raises or returns
something else than a list of :class:`BackendInfo` with usable names) is
logged, skipped and listed by ``snaptree backends``; the others still work.
Two backends with one name are an error naming both providers.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from typing import Iterable

import attrs
import pluggy

from . import hookspecs
from .boundary import GuardedHooks
from .errors import BackendNotFound, PluginError
from .markers import PROJECT_NAME
from .model import BackendInfo

__all__ = ["PluginSet", "ENTRY_POINT_GROUP", "ENV_PLUGINS"]

log = logging.getLogger("snaptree.plugins")

ENTRY_POINT_GROUP = "snaptree"
ENV_PLUGINS = "SNAPTREE_PLUGINS"


def _wanted_names() -> set[str] | None:
    value = os.environ.get(ENV_PLUGINS)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


class PluginSet:
    """A pluggy manager plus the backends its plugins registered."""

    def __init__(self, plugins: Iterable[object] = (), *, load_entrypoints: bool = True):
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        #: entry-point name -> one-line reason it failed to load
        self.broken: dict[str, str] = {}
        self._guarded = GuardedHooks(self)
        if load_entrypoints:
            self._load_entrypoints()
        for plugin in plugins:
            self.register(plugin)
        self._backends: dict[str, BackendInfo] | None = None

    @property
    def hook(self) -> GuardedHooks:
        """The hook relay; what a plugin raises outside the error tree is
        wrapped (see :mod:`snaptree.boundary`)."""
        return self._guarded

    def register(self, plugin: object, name: str | None = None) -> None:
        self.pm.register(plugin, name=name)
        self._backends = None

    def unregister(self, plugin: object) -> None:
        self.pm.unregister(plugin)
        self._backends = None

    def _load_entrypoints(self) -> None:
        wanted = _wanted_names()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            if self.pm.get_plugin(ep.name) is not None or self.pm.is_blocked(ep.name):
                continue
            try:
                module = ep.load()
                plugin = getattr(module, "plugin", module)
                if isinstance(plugin, type):
                    raise TypeError(f"{ep.value}: 'plugin' is the class {plugin.__name__}, "
                                    f"not an instance (write plugin = {plugin.__name__}())")
                self.pm.register(plugin, name=ep.name)
            except Exception as err:  # a broken third-party plugin must not stop us
                self._mark_broken(ep.name, f"{type(err).__name__}: {err}")

    def _mark_broken(self, name: str, reason: str) -> None:
        self.broken[name] = reason
        log.warning("skipping snaptree plugin %r: %s", name, reason)

    @property
    def backends(self) -> dict[str, BackendInfo]:
        """Registered backends by name, checked for duplicates."""
        if self._backends is None:
            found: dict[str, BackendInfo] = {}
            for impl in self.pm.hook.snaptree_backends.get_hookimpls():
                provider = impl.plugin_name
                try:
                    infos = _registered(impl.function())
                except Exception as err:  # the plugin's mistake: it goes, the others stay
                    self.pm.unregister(impl.plugin)
                    self._mark_broken(provider, f"snaptree_backends: {type(err).__name__}: {err}")
                    continue
                for info in infos:
                    if info.name in found:
                        raise PluginError(
                            f"backend {info.name!r} is registered twice: by "
                            f"{found[info.name].provider!r} and by {provider!r}")
                    found[info.name] = attrs.evolve(info, provider=provider)
            self._backends = found
        return self._backends

    def backend(self, name: str) -> BackendInfo:
        try:
            return self.backends[name]
        except KeyError:
            known = ", ".join(sorted(self.backends)) or "none"
            broken = f"; broken plugins: {', '.join(sorted(self.broken))}" if self.broken else ""
            raise BackendNotFound(f"unknown backend {name!r} (installed: {known}{broken})") from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: what a backend may be called: a spec is ``NAME:LOCATOR``
_BACKEND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")


def _registered(result: object) -> list[BackendInfo]:
    """The backends one ``snaptree_backends`` call returned, checked; a
    :class:`TypeError` or :class:`ValueError` says what is wrong."""
    if result is None:
        return []
    if isinstance(result, (BackendInfo, str, bytes, dict)) or not hasattr(result, "__iter__"):
        raise TypeError(f"returned a {type(result).__name__}, not a list of BackendInfo")
    infos = list(result)
    for info in infos:
        if not isinstance(info, BackendInfo):
            raise TypeError(f"registered {_short(info)}, not a BackendInfo")
        if not isinstance(info.name, str) or not _BACKEND_NAME.match(info.name):
            raise ValueError(f"backend name {info.name!r} is not 1-32 of a-z, 0-9, _ and -, "
                             "starting with a letter (a spec is NAME:LOCATOR)")
    return infos
