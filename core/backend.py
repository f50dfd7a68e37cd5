"""A convenience base class for backend plugins.

Subclass :class:`VolumeBackend`, set ``info`` and override the methods you
support; the base class implements the hooks and answers only for its own
backend name.  Nothing here is private to the built-in backends.

Example::

    class MyBackend(VolumeBackend):
        info = BackendInfo("mine", "my storage", Capabilities())

        def claim(self, locator): ...
        def snapshot(self, volumes, ctx): ...
        def revert(self, members, ctx): ...
        def delete(self, members, ctx): ...
        def list(self, volume): ...
"""

from __future__ import annotations

from typing import Sequence

from .errors import NotSupported, PluginError
from .markers import hookimpl
from .model import BackendInfo, MemberSnapshot, OpContext, RevertFailed, SpaceUsage, Volume

__all__ = ["VolumeBackend"]


class VolumeBackend:
    """Dispatches snaptree's hooks to methods for one backend name."""

    info: BackendInfo

    # -- methods a subclass overrides ---------------------------------------

    def claim(self, locator: str) -> Volume:
        """Validate and normalise ``locator``; every backend must override this."""
        raise PluginError(f"backend {self.info.name!r} does not say how to claim a volume "
                          "(its plugin must override VolumeBackend.claim)")

    def prepare(self, operation: str, volumes: Sequence[Volume], ctx: OpContext) -> None:
        """Validate without side effects; raise on failure."""

    def snapshot(self, volumes: Sequence[Volume], ctx: OpContext) -> list[MemberSnapshot]:
        raise NotSupported(f"backend {self.info.name!r} cannot snapshot")

    def revert(self, members: Sequence[MemberSnapshot], ctx: OpContext) -> None:
        raise NotSupported(f"backend {self.info.name!r} cannot revert")

    def delete(self, members: Sequence[MemberSnapshot], ctx: OpContext) -> None:
        raise NotSupported(f"backend {self.info.name!r} cannot delete")

    def list(self, volume: Volume) -> list[MemberSnapshot]:
        return []

    def space_used(self, member: MemberSnapshot) -> SpaceUsage:
        return SpaceUsage()

    def recover_volume(self, volume: Volume) -> list[str | RevertFailed]:
        """Finish leftovers; see :func:`snaptree.hookspecs.snaptree_recover_volume`."""
        return []

    def volume_path(self, volume: Volume) -> str:
        """The file or device a VM opens for ``volume`` now (the locator by default)."""
        return volume.locator

    def footprint(self, volume: Volume) -> list[str] | None:
        """The paths ``volume`` and its snapshots occupy, its own first;
        ``None`` (the default) leaves overlaps unchecked.  See
        :func:`snaptree.hookspecs.snaptree_volume_footprint`."""
        return None

    # -- the hooks ------------------------------------------------------------

    def _mine(self, backend: str) -> bool:
        return backend == self.info.name

    def _listed(self, method: str, result):
        """``list(result)``, or :class:`PluginError` naming ``method`` when it
        returned ``None`` (a forgotten ``return``) or something not a list."""
        if result is None or isinstance(result, (str, bytes, dict)) or not hasattr(
                result, "__iter__"):
            raise PluginError(
                f"{type(self).__name__}.{method} (backend {self.info.name!r}) returned "
                f"{'None' if result is None else type(result).__name__}, not a list"
                + (" (a missing 'return'?)" if result is None else ""))
        return list(result)

    @hookimpl
    def snaptree_backends(self):
        return [self.info]

    @hookimpl
    def snaptree_claim_volume(self, backend, locator):
        if not self._mine(backend):
            return None
        return self.claim(locator)

    @hookimpl
    def snaptree_prepare(self, backend, operation, volumes, ctx):
        if not self._mine(backend):
            return None
        self.prepare(operation, volumes, ctx)
        return True

    @hookimpl
    def snaptree_snapshot(self, backend, volumes, ctx):
        if not self._mine(backend):
            return None
        return self._listed("snapshot", self.snapshot(volumes, ctx))

    @hookimpl
    def snaptree_revert(self, backend, members, ctx):
        if not self._mine(backend):
            return None
        self.revert(members, ctx)
        return True

    @hookimpl
    def snaptree_delete(self, backend, members, ctx):
        if not self._mine(backend):
            return None
        self.delete(members, ctx)
        return True

    @hookimpl
    def snaptree_list(self, backend, volume):
        if not self._mine(backend):
            return None
        return self._listed("list", self.list(volume))

    @hookimpl
    def snaptree_space_used(self, backend, member):
        if not self._mine(backend):
            return None
        return self.space_used(member)

    @hookimpl
    def snaptree_volume_path(self, backend, volume):
        if not self._mine(backend):
            return None
        return self.volume_path(volume)

    @hookimpl
    def snaptree_volume_footprint(self, backend, volume):
        if not self._mine(backend):
            return None
        paths = self.footprint(volume)
        return None if paths is None else list(paths)

    @hookimpl
    def snaptree_recover_volume(self, backend, volume):
        if not self._mine(backend):
            return None
        return self._listed("recover_volume", self.recover_volume(volume))
