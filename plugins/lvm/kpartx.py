"""Partition mappings of a block device with kpartx, read-only.

``kpartx -l`` tells the names the partition maps will get; ``kpartx -a -r``
makes them as read-only device-mapper devices and ``kpartx -d`` removes
them.  All calls go through the lvm backend's :class:`LvmCommands`.
"""

from __future__ import annotations

import os

from .lvmcmd import LvmCommands
from .names import dm_name

__all__ = ["dm_name", "partition_names", "add_partitions", "delete_partitions", "MAPPER_DIR"]

MAPPER_DIR = "/dev/mapper"


def partition_names(cmds: LvmCommands, device: str) -> list[str]:
    """Names of the maps ``kpartx -a`` would make for ``device`` (empty: no partition table)."""
    out = cmds.tool(["kpartx", "-l", "-r", device])
    names = []
    for line in out.splitlines():
        name, sep, _rest = line.partition(" : ")
        if sep and name.strip():
            names.append(name.strip())
    return names


def add_partitions(cmds: LvmCommands, device: str) -> list[str]:
    """Map ``device``'s partitions read-only; returns their ``/dev/mapper`` paths."""
    names = partition_names(cmds, device)
    if not names:
        return []
    cmds.tool(["kpartx", "-a", "-r", "-s", device])
    return [os.path.join(MAPPER_DIR, name) for name in names]


def delete_partitions(cmds: LvmCommands, device: str) -> list[str]:
    """Remove ``device``'s partition maps; returns the paths that existed."""
    existing = [os.path.join(MAPPER_DIR, n) for n in partition_names(cmds, device)]
    existing = [p for p in existing if os.path.exists(p)]
    if existing:
        cmds.tool(["kpartx", "-d", "-s", device])
    return existing
