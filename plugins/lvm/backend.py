"""The lvm backend: thick and thin LVM snapshots of ``lvm:VG/LV`` volumes.

Snapshot LVs are named ``<lv>.snaptree.<snapshot_id>`` and tagged
``snaptree``.  A thin LV gets a thin snapshot (no size, activation skipped
until needed); any other LV gets a thick copy-on-write snapshot whose size
follows the group option ``lvm.snapshot_size``: ``N%ORIGIN`` (default
``DEFAULT_SNAPSHOT_SIZE``) or an absolute LVM size such as ``512M``.  A thick
snapshot that receives more changed data than it holds becomes invalid; it
is listed with ``valid=False`` and never reverted to.

Reverts are described in :mod:`snaptree_lvm.revert`; partition mapping in
:mod:`snaptree_lvm.mapping`.
"""

from __future__ import annotations

import re
from typing import Sequence

from snaptree import BackendInfo, Capabilities, MemberSnapshot, SpaceUsage, Volume, VolumeBackend
from snaptree.errors import (
    Conflict,
    InvalidInput,
    NotSupported,
    SnapshotNotFound,
    VolumeInUse,
    VolumeNotFound,
)
from snaptree.markers import hookimpl

from . import mapping
from .lvmcmd import LvInfo, LvmCommands
from .names import made_from, match_snapshot_lv, parse_locator, snapshot_lv_name
from .revert import (
    SNAPSHOT_TAG,
    activate_marked,
    consumed_tag,
    drop_failed_merge,
    finish_thick,
    finish_thin,
    pending_tags,
    restore_inactive,
    revert_thick,
    revert_thin,
)

__all__ = ["LvmBackend", "DEFAULT_SNAPSHOT_SIZE", "check_snapshot_size"]

#: A fifth of the origin: room for a fifth of its blocks to change before overflow.
DEFAULT_SNAPSHOT_SIZE = "20%ORIGIN"
_PERCENT_SIZE = re.compile(r"^([1-9][0-9]{0,2})%ORIGIN$")
_ABSOLUTE_SIZE = re.compile(r"^[0-9]+(\.[0-9]+)?[bBsSkKmMgGtTpPeE]?$")


def check_snapshot_size(value: object) -> str:
    """Validate ``lvm.snapshot_size``: ``N%ORIGIN`` (1-100) or an LVM size like ``512M``."""
    text = str(value).strip() if value is not None else ""
    match = _PERCENT_SIZE.match(text)
    if match and int(match[1]) <= 100:
        return text
    if _ABSOLUTE_SIZE.match(text) and float(re.sub(r"[^0-9.]", "", text)) > 0:
        return text
    raise InvalidInput(f"lvm.snapshot_size {value!r} must be N%ORIGIN (1-100) or a size like 512M")


def _unmap_hint(ctx) -> str:
    if ctx is None or not getattr(ctx, "snapshot_name", ""):
        return "snaptree unmap GROUP SNAPSHOT"
    return f"snaptree unmap {ctx.group.name} {ctx.snapshot_name}"


class LvmBackend(VolumeBackend):
    """Thick and thin LVM snapshots; one :class:`LvmCommands` runs every program."""

    info = BackendInfo(
        name="lvm",
        description="LVM logical volumes: thick (copy-on-write) and thin snapshots",
        capabilities=Capabilities(live=False, internal=False, external=True, read_only=False,
                                  revert_to_any=True, atomic_batch=False, memory_state=False,
                                  needs_root=True),
        required_tools=("lvm", "kpartx"),
    )

    def __init__(self, commands: LvmCommands | None = None):
        self._commands = commands

    @property
    def commands(self) -> LvmCommands:
        # made on first use: udev detection must see the system we run on, not import time
        if self._commands is None:
            self._commands = LvmCommands()
        return self._commands

    # -- helpers ------------------------------------------------------------------

    def _origin(self, vg: str, lv: str) -> LvInfo:
        info = self.commands.lv(vg, lv)
        if info is None:
            raise VolumeNotFound(f"lvm: logical volume {vg}/{lv} does not exist")
        return info

    def _member_lv(self, member: MemberSnapshot) -> tuple[str, str, str]:
        vg, lv = parse_locator(member.locator, room=False)
        return vg, lv, snapshot_lv_name(lv, member.snapshot_id)

    # -- the operations -----------------------------------------------------------

    def claim(self, locator):
        vg, lv = parse_locator(locator)
        origin = made_from(lv)
        if origin is not None:
            # its origin's delete or revert would remove or replace it
            raise InvalidInput(f"lvm: {vg}/{lv} is named as snaptree names what it makes of "
                               f"{vg}/{origin}; snapshot {vg}/{origin} instead")
        info = self._origin(vg, lv)
        if info.is_thick_snapshot:
            raise InvalidInput(f"lvm: {vg}/{lv} is a snapshot; snapshot its origin instead")
        if info.is_hidden or "pool" in info.roles or info.attr[:1] in ("t", "T", "e"):
            raise InvalidInput(f"lvm: {vg}/{lv} is an internal LV or a pool, not a volume")
        return Volume("lvm", f"{vg}/{lv}")

    def volume_path(self, volume):
        vg, lv = parse_locator(volume.locator, room=False)
        return f"/dev/{vg}/{lv}"

    def footprint(self, volume):
        # the device node; snapshot LVs are siblings named <lv>.snaptree.<id>,
        # which claim refuses as volumes
        return [self.volume_path(volume)]

    def prepare(self, operation, volumes, ctx):
        check_snapshot_size(ctx.option("lvm.snapshot_size", DEFAULT_SNAPSHOT_SIZE))
        for volume in volumes:
            vg, lv = parse_locator(volume.locator, room=False)
            existing = self.commands.lv_map(vg)
            origin = existing.get(lv)
            if origin is None:
                raise VolumeNotFound(f"lvm: logical volume {vg}/{lv} does not exist")
            if operation == "snapshot":
                if origin.is_merging or pending_tags(origin.tags):
                    raise Conflict(f"lvm: a revert of {vg}/{lv} is still pending; "
                                   "run 'snaptree recover' first")
                if ctx.snapshot_id and snapshot_lv_name(lv, ctx.snapshot_id) in existing:
                    raise Conflict(f"lvm: {vg}/{snapshot_lv_name(lv, ctx.snapshot_id)} exists")
        if operation == "revert":
            for member in ctx.scratch.get("members", []):
                self._check_revertible(member, ctx)
        if operation == "delete":
            for member in ctx.scratch.get("members", []):
                self._check_deletable(member, ctx)

    def _check_revertible(self, member: MemberSnapshot, ctx=None, *,
                          look_inside=True) -> LvInfo | None:
        """Refuse a revert that cannot work; ``look_inside`` activates an inactive
        thick origin for a moment to see whether the snapshot overflowed.

        Returns the snapshot LV, or ``None`` when an interrupted revert to it
        consumed it (``recover`` redoes the revert to end it)."""
        vg, lv, name = self._member_lv(member)
        existing = self.commands.lv_map(vg)
        snap, origin = existing.get(name), existing.get(lv)
        if snap is None and origin is not None and consumed_tag(member.snapshot_id) in origin.tags:
            return None
        if snap is None:
            raise SnapshotNotFound(f"lvm: snapshot LV {vg}/{name} is missing; cannot revert")
        if origin is None:
            raise VolumeNotFound(f"lvm: logical volume {vg}/{lv} does not exist")
        if look_inside and not snap.is_thin and not snap.is_merging and not origin.is_active:
            # device-mapper alone knows whether a thick snapshot overflowed: look while active
            # (not for a merging one: activating the origin would start its merge)
            activate_marked(self.commands, vg, lv, member.snapshot_id)
            try:
                existing = self.commands.lv_map(vg)
            finally:
                restore_inactive(self.commands, vg, lv, member.snapshot_id)
            snap, origin = existing.get(name, snap), existing.get(lv, origin)
        if snap.is_invalid:
            raise NotSupported(f"lvm: snapshot {vg}/{name} overflowed its copy-on-write space "
                               "and is invalid; it cannot be reverted to")
        if not snap.is_thin and snap.is_open and not snap.is_merging:
            # LVM would defer the merge while the snapshot is open, as for an open origin
            raise VolumeInUse(f"lvm: snapshot {vg}/{name} is open (mapped?); unmap it first "
                              f"({_unmap_hint(ctx)})")
        if snap.is_thin and origin.is_open:
            raise VolumeInUse(f"lvm: thin volume {vg}/{lv} is open; close it (stop the VM, "
                              "unmount) to revert")
        other_merge = [t for t in pending_tags(origin.tags) if t[2] != member.snapshot_id]
        if other_merge:
            raise Conflict(f"lvm: the revert of {vg}/{lv} to snapshot {other_merge[0][2]} is "
                           "still pending; run 'snaptree recover' first")
        return snap

    def snapshot(self, volumes, ctx):
        size = check_snapshot_size(ctx.option("lvm.snapshot_size", DEFAULT_SNAPSHOT_SIZE))
        members = []
        for volume in volumes:
            vg, lv = parse_locator(volume.locator, room=False)
            origin = self._origin(vg, lv)
            name = snapshot_lv_name(lv, ctx.snapshot_id)
            try:
                if origin.is_thin:
                    self.commands.create_thin_snapshot(vg, lv, name, tags=[SNAPSHOT_TAG])
                else:
                    self.commands.create_thick_snapshot(vg, lv, name, size, tags=[SNAPSHOT_TAG])
            except BaseException:
                if self.commands.lv(vg, name) is not None:  # never leave half a member
                    self.commands.remove(vg, name)
                raise
            members.append(MemberSnapshot(
                backend="lvm", locator=volume.locator, snapshot_id=ctx.snapshot_id,
                ref=f"{vg}/{name}", size_bytes=origin.size_bytes,
                data={"kind": "thin" if origin.is_thin else "thick"}))
        return members

    def revert(self, members, ctx):
        for member in members:
            vg, lv, name = self._member_lv(member)
            # revert_thick looks inside an inactive origin itself, once it is active
            snap = self._check_revertible(member, ctx, look_inside=False)
            if snap is not None and snap.is_thin:
                revert_thin(self.commands, vg, lv, member.snapshot_id)
                continue
            warning = revert_thick(self.commands, vg, lv, member.snapshot_id)
            if warning:
                ctx.scratch.setdefault("warnings", []).append(warning)

    def _check_deletable(self, member: MemberSnapshot, ctx=None) -> None:
        """Refuse, before the delete is journalled, what ``lvremove`` would refuse."""
        vg, lv, name = self._member_lv(member)
        existing = self.commands.lv_map(vg)
        snap, origin = existing.get(name), existing.get(lv)
        if snap is None:
            return
        if snap.is_merging:
            if not snap.is_invalid:
                raise Conflict(f"lvm: {vg}/{name} is being merged into {lv}; run 'snaptree "
                               "recover' once the volume is closed, then delete")
            if origin is not None and origin.is_open:
                raise VolumeInUse(f"lvm: {vg}/{name} overflowed while LVM waited to merge it "
                                  f"into {lv}; close {vg}/{lv} to delete it")
        elif snap.is_open:
            raise VolumeInUse(f"lvm: snapshot {vg}/{name} is open (mapped?); unmap it first "
                              f"({_unmap_hint(ctx)})")

    def delete(self, members, ctx):
        for member in members:
            vg, lv, name = self._member_lv(member)
            self._check_deletable(member, ctx)
            existing = self.commands.lv_map(vg)
            origin, snap = existing.get(lv), existing.get(name)
            if origin is not None:
                for tag, _kind, snapshot_id, _size in pending_tags(origin.tags):
                    if snapshot_id == member.snapshot_id:
                        if snap is not None and snap.is_merging:
                            # an overflowed snapshot whose merge can never run (checked above)
                            drop_failed_merge(self.commands, vg, lv, name)
                            snap = None
                        self.commands.del_tag(vg, lv, tag)  # do not re-create a deleted snapshot
            if snap is not None:
                self.commands.remove(vg, name)

    def list(self, volume):
        vg, lv = parse_locator(volume.locator, room=False)
        out = []
        for info in self.commands.lvs(vg):
            snapshot_id = match_snapshot_lv(lv, info.name)
            if snapshot_id is None:
                continue
            out.append(MemberSnapshot(
                backend="lvm", locator=volume.locator, snapshot_id=snapshot_id,
                ref=f"{vg}/{info.name}", size_bytes=info.size_bytes, valid=not info.is_invalid,
                data={"kind": "thin" if info.is_thin else "thick",
                      "data_percent": info.data_percent, "merging": info.is_merging,
                      "active": info.is_active}))
        return out

    def space_used(self, member):
        vg, _lv, name = self._member_lv(member)
        info = self.commands.lv(vg, name)
        if info is None or info.size_bytes is None or info.data_percent is None:
            return SpaceUsage()
        used = int(info.size_bytes * info.data_percent / 100)
        if info.is_thin:
            # pool blocks mapped by the snapshot, shared with the origin where unchanged
            return SpaceUsage(exclusive_bytes=None, referenced_bytes=used)
        return SpaceUsage(exclusive_bytes=used, referenced_bytes=info.size_bytes)

    def recover_volume(self, volume):
        vg, lv = parse_locator(volume.locator, room=False)
        existing = self.commands.lv_map(vg)
        lines = finish_thin(self.commands, vg, lv, existing)
        # finish_thin may have renamed LVs: then finish_thick reads the VG afresh
        return lines + finish_thick(self.commands, vg, lv, None if lines else existing)

    # -- snaptree map / unmap -----------------------------------------------------

    @hookimpl
    def snaptree_map_snapshot(self, backend: str, member: MemberSnapshot) -> Sequence[str] | None:
        if not self._mine(backend):
            return None
        return mapping.map_member(self.commands, member)

    @hookimpl
    def snaptree_unmap_snapshot(self, backend: str, member: MemberSnapshot) -> Sequence[str] | None:
        if not self._mine(backend):
            return None
        return mapping.unmap_member(self.commands, member)
