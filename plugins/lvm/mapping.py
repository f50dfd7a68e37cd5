"""``snaptree map`` / ``snaptree unmap`` for LVM members.

:func:`map_member` activates the snapshot LV if needed (thin snapshots skip
activation), maps its partitions read-only with kpartx and waits for the
``/dev/mapper`` nodes; :func:`unmap_member` removes the maps and deactivates
a thin snapshot again.  A user can then mount one partition of an old
snapshot (``mount -o ro,noload``) and copy a file out.
"""

from __future__ import annotations

import os
from typing import Sequence

from snaptree.devices import wait_for_block_devices
from snaptree.errors import NotSupported, SnapshotNotFound
from snaptree.model import MemberSnapshot

from .kpartx import MAPPER_DIR, add_partitions, delete_partitions, dm_name
from .lvmcmd import LvmCommands
from .names import parse_locator, snapshot_lv_name

__all__ = ["map_member", "unmap_member", "wait_for_nodes", "NODE_TIMEOUT"]

#: Seconds to wait for device nodes after activation or kpartx.
NODE_TIMEOUT = 20.0


def wait_for_nodes(paths: Sequence[str], *, present: bool = True,
                   timeout: float = NODE_TIMEOUT) -> None:
    """Wait for the device tracker to see ``paths`` appear (or go, ``present=False``)."""
    if paths:
        wait_for_block_devices(list(paths), timeout=timeout, present=present)


def map_member(cmds: LvmCommands, member: MemberSnapshot) -> list[str]:
    """Expose the partitions of ``member``'s snapshot LV read-only.

    :returns: the ``/dev/mapper`` paths, one per partition (empty when the
        snapshot holds no partition table).
    """
    vg, lv = parse_locator(member.locator, room=False)
    name = snapshot_lv_name(lv, member.snapshot_id)
    info = cmds.lv(vg, name)
    if info is None:
        raise SnapshotNotFound(f"lvm: snapshot LV {vg}/{name} does not exist")
    device = os.path.join(MAPPER_DIR, dm_name(vg, name))
    if info.is_invalid:
        raise NotSupported(f"lvm: snapshot {vg}/{name} is invalid (overflowed); it cannot be read")
    if not info.is_active:
        cmds.activate(vg, name)
    wait_for_nodes([device])
    paths = add_partitions(cmds, device)
    wait_for_nodes(paths)
    return paths


def unmap_member(cmds: LvmCommands, member: MemberSnapshot) -> list[str]:
    """Remove the partition maps of ``member``; a thin snapshot is deactivated again."""
    vg, lv = parse_locator(member.locator, room=False)
    name = snapshot_lv_name(lv, member.snapshot_id)
    info = cmds.lv(vg, name)
    if info is None or not info.is_active:
        return []
    device = os.path.join(MAPPER_DIR, dm_name(vg, name))
    removed = delete_partitions(cmds, device)
    wait_for_nodes(removed, present=False)
    if info.skips_activation:
        cmds.deactivate(vg, name)
    return removed
