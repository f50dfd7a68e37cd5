"""The boundary between snaptree and its plugins.

Every hook call goes through :class:`GuardedHooks`.  What a plugin raises
that is not a :class:`~snaptree.errors.SnaptreeError` is wrapped here, once,
keeping the cause (``raise ... from err``): an ``OSError`` or a failed
subprocess becomes a :class:`~snaptree.errors.BackendError` (exit 6, the
storage failed), anything else a :class:`~snaptree.errors.PluginError`
(exit 10, the plugin's mistake), each naming the plugin and the hook.
``KeyboardInterrupt`` and ``SystemExit`` pass as they are.

What a plugin returns where snaptree builds on it (a claimed volume, the
members of a snapshot) is checked here too, before anything is recorded.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any, Sequence

from .errors import BackendError, PluginError, SnaptreeError
from .model import MemberSnapshot, OpContext, Volume

__all__ = ["GuardedHooks", "plugin_label", "backend_label", "checked_claims", "sort_members",
           "STORAGE_ERRORS"]

#: lower-layer exceptions that mean the storage failed, not the plugin
STORAGE_ERRORS = (OSError, subprocess.SubprocessError)


class GuardedHooks:
    """The plugin manager's hook relay, every call wrapped (see the module)."""

    def __init__(self, plugins: Any):
        self._plugins = plugins

    def __getattr__(self, name: str) -> "_GuardedCaller":
        return _GuardedCaller(self._plugins, name, getattr(self._plugins.pm.hook, name))


class _GuardedCaller:
    def __init__(self, plugins: Any, name: str, caller: Any):
        self._plugins, self._name, self._caller = plugins, name, caller

    def __call__(self, **kwargs: Any) -> Any:
        try:
            return self._caller(**kwargs)
        except SnaptreeError:
            raise
        except Exception as err:
            who = _culprit(self._plugins, self._caller, kwargs, err)
            cls = BackendError if isinstance(err, STORAGE_ERRORS) else PluginError
            text = " ".join(str(err).split())
            raise cls(f"{who}: {self._name} raised {type(err).__name__}"
                      + (f": {text}" if text else "")) from err

    def __getattr__(self, name: str) -> Any:
        return getattr(self._caller, name)


def plugin_label(plugins: Any, plugin_name: str, plugin: object = None) -> str:
    """``plugin 'NAME' (backend 'B')``: the entry point's name (a class name
    for a plugin registered without one) and the backends it registered."""
    name = plugin_name
    if plugin_name.isdigit():  # pluggy names an unnamed object by its id
        plugin = plugin if plugin is not None else plugins.pm.get_plugin(plugin_name)
        name = type(plugin).__name__ if plugin is not None else "unnamed"
    try:
        served = sorted(n for n, info in plugins.backends.items() if info.provider == plugin_name)
    except SnaptreeError:
        served = []
    if len(served) == 1:
        return f"plugin {name!r} (backend {served[0]!r})"
    if served:
        return f"plugin {name!r} (backends {', '.join(served)})"
    return f"plugin {name!r}"


def backend_label(plugins: Any, backend: str) -> str:
    """:func:`plugin_label` of the plugin that registered ``backend``."""
    try:
        provider = plugins.backend(backend).provider
    except SnaptreeError:
        return f"backend {backend!r}"
    return plugin_label(plugins, provider)


def _runs(impl: Any, frame: Any) -> bool:
    """True when ``frame`` runs hook implementation ``impl`` (of its own plugin)."""
    function = impl.function
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    if code is None or frame.f_code is not code:
        return False
    owner = getattr(function, "__self__", None)
    if owner is None or not code.co_argcount:
        return True
    return frame.f_locals.get(code.co_varnames[0]) is owner


def _culprit(plugins: Any, caller: Any, kwargs: dict[str, Any], err: BaseException) -> str:
    """The plugin whose hook implementation ``err`` came out of: the deepest
    frame of its traceback that runs one; else the backend's provider."""
    try:
        impls = caller.get_hookimpls()
    except Exception:
        impls = []
    found = None
    tb = err.__traceback__
    while tb is not None:
        for impl in impls:
            if _runs(impl, tb.tb_frame):
                found = impl
        tb = tb.tb_next
    if found is not None:
        return plugin_label(plugins, found.plugin_name, found.plugin)
    backend = kwargs.get("backend")
    if isinstance(backend, str):
        return backend_label(plugins, backend)
    return f"a plugin's {caller.name}" if hasattr(caller, "name") else "a plugin"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checked_claims(plugins: Any, backend: str, locator: str,
                   answers: Sequence[object]) -> list[Volume]:
    """The volumes ``snaptree_claim_volume`` answered for ``BACKEND:LOCATOR``;
    :class:`PluginError` for an answer that is not a :class:`Volume` of that
    backend (it would put the volume under another backend's name)."""
    claims = [v for v in answers if v is not None]
    for claim in claims:
        if not isinstance(claim, Volume):
            problem = f"answered {_short(claim)}, not a Volume"
        elif claim.backend != backend:
            problem = (f"answered with a volume of backend {claim.backend!r} "
                       f"({_short(claim.spec)})")
        elif not isinstance(claim.locator, str) or not claim.locator:
            problem = f"answered a volume whose locator is {_short(claim.locator)}"
        else:
            continue
        raise PluginError(f"{backend_label(plugins, backend)} claimed volume "
                          f"{backend}:{locator} wrongly: it {problem}")
    return claims


def sort_members(plugins: Any, backend: str, volumes: Sequence[Volume], result: object,
                 ctx: OpContext) -> tuple[list[MemberSnapshot], list[object], str | None]:
    """Split what ``snaptree_snapshot`` returned for ``volumes`` into the
    members that are right and the ones that are not, and say what is wrong.

    Right: a :class:`MemberSnapshot` carrying ``ctx.snapshot_id``, the
    backend and locator of one of ``volumes``, one per volume, with a
    ``ref`` and JSON-safe ``data``.

    :returns: ``(right, wrong, problem)``, ``problem`` ``None`` when all is well.
    """
    who = backend_label(plugins, backend)
    if result is None:
        return [], [], (f"{who} returned nothing from snaptree_snapshot for "
                        f"{len(volumes)} volume(s), not one member each")
    if (isinstance(result, (str, bytes, Mapping, MemberSnapshot))
            or not hasattr(result, "__iter__")):
        return [], [result], (f"{who} returned {_short(result)} from snaptree_snapshot, "
                              "not a list of MemberSnapshot")
    wanted = {v.spec for v in volumes}
    right: list[MemberSnapshot] = []
    wrong: list[object] = []
    problems: list[str] = []
    for item in list(result):
        if not isinstance(item, MemberSnapshot):
            problems.append(f"{_short(item)} is not a MemberSnapshot")
            wrong.append(item)
            continue
        spec = f"{item.backend}:{item.locator}"
        if item.snapshot_id != ctx.snapshot_id:
            problems.append(f"the member for {spec} carries snapshot id {item.snapshot_id!r}, "
                            f"not this snapshot's {ctx.snapshot_id!r}")
        elif spec not in wanted:
            problems.append(f"a member names volume {spec}, which it was not given "
                            f"({', '.join(sorted(wanted))})")
        elif any(m.volume.spec == spec for m in right):
            problems.append(f"two members for {spec}")
        elif not isinstance(item.ref, str) or not item.ref:
            problems.append(f"the member for {spec} has ref {_short(item.ref)}")
        elif not _json_safe(item.data):
            problems.append(f"the member for {spec} has data that is not JSON-safe")
        else:
            right.append(item)
            continue
        wrong.append(item)
    if not problems:
        missing = sorted(wanted - {m.volume.spec for m in right})
        if missing:
            problems.append(f"no member for {missing[0]}")
    if not problems:
        return right, wrong, None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return right, wrong, f"{who} returned a wrong member from snaptree_snapshot: {problems[0]}{more}"


def _json_safe(data: object) -> bool:
    try:
        json.dumps(dict(data))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False
    return True
