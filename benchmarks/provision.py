"""The volume-provisioner protocol and how a backend's provisioner is found.

A benchmark needs fresh volumes of a given size for each backend.  Snaptree's
plugin contract says nothing about *making* volumes, so the benchmarks ask a
second, benchmark-only question of every installed backend: "make me a
volume of N MiB".  The answer is a :class:`Provisioner`.

Where a provisioner comes from, first match wins:

1. the backend's plugin object, or the module its entry point names, has an
   attribute ``snaptree_bench_volume`` (:data:`HOOK_NAME`).  It is either a
   full :class:`Provisioner` object (anything with ``make_volume``), or a
   plain function, the documented short form::

       def snaptree_bench_volume(workdir: str, name: str, size_mib: int):
           '''Make a fresh volume holding size_mib MiB of data under workdir.

           Return its spec ("mybackend:/path") or a mapping with "spec" and,
           optionally, "write" (callable(offset, length, seed) that changes
           the live volume's content), "cleanup" (callable()) and
           "group_options" (dict passed to Snaptree.create_group).
           '''

2. the provisioners shipped here for snaptree's own backends
   (:data:`BUILTIN`, see :mod:`benchmarks.builtin`).

A backend with neither is reported as skipped, with the reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import attrs

__all__ = [
    "HOOK_NAME",
    "BenchVolume",
    "Primitive",
    "Provisioner",
    "FunctionProvisioner",
    "Variant",
    "discover",
]

HOOK_NAME = "snaptree_bench_volume"
MIB = 1024 * 1024


@attrs.define
class BenchVolume:
    """One fresh volume made for a benchmark."""

    spec: str
    #: Changes the live volume's content: ``write(offset, length, seed)``.
    #: ``None`` when the provisioner cannot (throughput is then skipped).
    write: Callable[[int, int, int], None] | None = None
    #: Removes the volume and whatever the bare primitive left beside it.
    cleanup: Callable[[], None] | None = None
    #: Provisioner-private facts (paths, subvolume, LV name).
    data: dict[str, Any] = attrs.field(factory=dict)


@runtime_checkable
class Primitive(Protocol):
    """The bare storage operation a backend wraps, timed beside snaptree.

    ``tag`` names the snapshot; every method works on one volume, so a
    group of N volumes costs N calls.
    """

    label: str

    def create(self, volume: BenchVolume, tag: str) -> None: ...

    def revert(self, volume: BenchVolume, tag: str) -> None: ...

    def delete(self, volume: BenchVolume, tag: str) -> None: ...


@runtime_checkable
class Provisioner(Protocol):
    """Makes volumes for one backend on one kind of storage.

    ``name`` labels the variant in the results (``raw@btrfs``); ``backend``
    is the snaptree backend name the volumes' specs use.
    """

    name: str
    backend: str
    description: str
    #: Bare operations for the overhead ratio, or ``None``.
    primitive: Primitive | None
    #: Other tools doing the same job, by name (``{"snapper": ...}``).
    comparators: Mapping[str, Primitive]
    #: True when ``make_volume`` honours ``files`` (filesystem backends).
    supports_files: bool
    #: Options for ``Snaptree.create_group``.
    group_options: Mapping[str, Any]

    def unavailable(self) -> str | None:
        """Why this provisioner cannot run here, or ``None``."""

    def start(self, workdir: str) -> None:
        """Prepare storage (mount a loop filesystem, make a volume group)."""

    def stop(self) -> None:
        """Undo :meth:`start`; must not raise."""

    def make_volume(self, name: str, size_mib: int, files: int = 0) -> BenchVolume:
        """A fresh volume holding ``size_mib`` MiB of data and ``files`` small files."""

    def used_bytes(self) -> int | None:
        """Bytes in use on the storage holding the volumes, after a sync."""


@attrs.define
class FunctionProvisioner:
    """Adapts the short, function form of :data:`HOOK_NAME`."""

    backend: str
    function: Callable[..., Any]
    name: str = ""
    description: str = "third-party provisioner (function form)"
    primitive: Primitive | None = None
    comparators: Mapping[str, Primitive] = attrs.field(factory=dict)
    supports_files: bool = False
    group_options: dict[str, Any] = attrs.field(factory=dict)
    workdir: str = ""

    def __attrs_post_init__(self) -> None:
        self.name = self.name or self.backend

    def unavailable(self) -> str | None:
        return None

    def start(self, workdir: str) -> None:
        self.workdir = os.path.join(workdir, f"fn-{self.backend}")
        os.makedirs(self.workdir, exist_ok=True)

    def stop(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def make_volume(self, name: str, size_mib: int, files: int = 0) -> BenchVolume:
        answer = self.function(self.workdir, name, size_mib)
        if isinstance(answer, str):
            return BenchVolume(spec=answer)
        if not isinstance(answer, Mapping) or not isinstance(answer.get("spec"), str):
            raise TypeError(f"{HOOK_NAME} of {self.backend!r} returned {answer!r}, "
                            "not a spec string or a mapping with 'spec'")
        self.group_options.update(answer.get("group_options") or {})
        return BenchVolume(spec=answer["spec"], write=answer.get("write"),
                           cleanup=answer.get("cleanup"))

    def used_bytes(self) -> int | None:
        return None


@attrs.define
class Variant:
    """One line of the results: a provisioner to run, or a reason it cannot."""

    name: str
    backend: str
    provisioner: Provisioner | None
    skipped: str | None = None
    source: str = ""  # "plugin" or "builtin"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "source": self.source,
                "skipped": self.skipped,
                "description": getattr(self.provisioner, "description", ""),
                "primitive": getattr(getattr(self.provisioner, "primitive", None), "label", None),
                "comparators": sorted(getattr(self.provisioner, "comparators", {}) or {})}


def _plugin_hook(snaptree, provider: str) -> Any:
    """The :data:`HOOK_NAME` attribute of a backend's plugin or its module."""
    plugin = snaptree.plugins.pm.get_plugin(provider)
    candidates = [plugin]
    module_name = getattr(type(plugin), "__module__", "")
    for ep in importlib.metadata.entry_points(group="snaptree"):
        if ep.name == provider:
            module_name = ep.module
    if module_name:
        # the entry point's module first, then the module defining the class
        for name in (module_name, module_name.split(".")[0]):
            try:
                candidates.append(importlib.import_module(name))
            except ImportError:
                pass
    for obj in candidates:
        hook = getattr(obj, HOOK_NAME, None)
        if hook is not None:
            return hook
    return None


def _from_hook(backend: str, hook: Any) -> list[Provisioner]:
    if hasattr(hook, "make_volume"):
        return [hook]
    if isinstance(hook, (list, tuple)):
        return [p for item in hook for p in _from_hook(backend, item)]
    if callable(hook):
        return [FunctionProvisioner(backend=backend, function=hook)]
    raise TypeError(f"{HOOK_NAME} must be a provisioner, a list of them or a function; got {hook!r}")


def discover(snaptree, builtin: Mapping[str, Callable[[], list[Provisioner]]]) -> list[Variant]:
    """Every installed backend's provisioners, plus built-ins whose backend is missing.

    :param snaptree: a :class:`snaptree.Snaptree` (its plugin set is asked).
    :param builtin: backend name -> factory of the shipped provisioners.
    """
    variants: list[Variant] = []
    seen: set[str] = set()
    for entry in snaptree.backends():
        backend = entry["name"]
        seen.add(backend)
        if "broken" in entry:
            variants.append(Variant(backend, backend, None, f"plugin failed to load: {entry['broken']}"))
            continue
        source, provisioners = "plugin", []
        try:
            hook = _plugin_hook(snaptree, entry["provider"])
            if hook is not None:
                provisioners = _from_hook(backend, hook)
        except Exception as err:  # a third party's bug must not stop the run
            variants.append(Variant(backend, backend, None,
                                    f"{HOOK_NAME} failed: {type(err).__name__}: {err}", "plugin"))
            continue
        if not provisioners and backend in builtin:
            source, provisioners = "builtin", builtin[backend]()
        if not provisioners:
            variants.append(Variant(backend, backend, None,
                                    f"no volume provisioner (define {HOOK_NAME} in the plugin module)"))
            continue
        missing = entry.get("missing_tools") or []
        for prov in provisioners:
            reason = f"missing tools: {', '.join(missing)}" if missing else _safe_unavailable(prov)
            if reason is None and entry["capabilities"].get("needs_root") and os.geteuid() != 0:
                reason = "backend needs root"
            variants.append(Variant(prov.name, backend, prov, reason, source))
    for backend, factory in builtin.items():
        if backend not in seen:
            for prov in factory():
                variants.append(Variant(prov.name, backend, prov,
                                        f"backend {backend!r} is not installed "
                                        "(no plugin registers it)", "builtin"))
    return sorted(variants, key=lambda v: (v.backend, v.name))


def _safe_unavailable(prov: Provisioner) -> str | None:
    try:
        return prov.unavailable()
    except Exception as err:
        return f"unavailable() failed: {type(err).__name__}: {err}"
