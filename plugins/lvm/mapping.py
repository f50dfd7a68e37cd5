"""``snaptree map`` / ``snaptree unmap`` for LVM members.

:func:`map_member` activates the snapshot LV if needed (thin snapshots skip
activation), maps its partitions read-only with kpartx and waits for the
``/dev/mapper`` nodes; :func:`unmap_member` removes the maps and deactivates
a thin snapshot again.  A user can then mount one partition of an old
snapshot (``mount -o ro,noload``) and copy a file out.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from snaptree.errors import BackendError, NotSupported, SnapshotNotFound
from snaptree.model import MemberSnapshot

from .kpartx import MAPPER_DIR, add_partitions, delete_partitions, dm_name
from .lvmcmd import LvmCommands
from .names import parse_locator, snapshot_lv_name

__all__ = ["map_member", "unmap_member", "wait_for_nodes", "NODE_TIMEOUT"]

#: Seconds to wait for device nodes after activation or kpartx.
NODE_TIMEOUT = 20.0


def wait_for_nodes(paths: Sequence[str], timeout: float = NODE_TIMEOUT) -> None:
    """Wait until every path in ``paths`` exists as a block device."""
    try:
        from snaptree.devices import wait_for_block_devices  # type: ignore[attr-defined]
    except ImportError:
        wait_for_block_devices = None
    if wait_for_block_devices is not None:
        wait_for_block_devices(list(paths), timeout=timeout)
        return
    deadline = time.monotonic() + timeout
    missing = list(paths)
    while missing:
        missing = [p for p in missing if not os.path.exists(p)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise BackendError(f"lvm: device node {missing[0]} did not appear within {timeout:.0f}s")
        time.sleep(0.05)


def map_member(cmds: LvmCommands, member: MemberSnapshot) -> list[str]:
    """Expose the partitions of ``member``'s snapshot LV read-only.

    :returns: the ``/dev/mapper`` paths, one per partition (empty when the
        snapshot holds no partition table).
    """
    vg, lv = parse_locator(member.locator)
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
    vg, lv = parse_locator(member.locator)
    name = snapshot_lv_name(lv, member.snapshot_id)
    info = cmds.lv(vg, name)
    if info is None or not info.is_active:
        return []
    device = os.path.join(MAPPER_DIR, dm_name(vg, name))
    removed = delete_partitions(cmds, device)
    if info.skips_activation:
        cmds.deactivate(vg, name)
    return removed
