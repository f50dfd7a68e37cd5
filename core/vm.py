"""A group's VM as a whole: the files it opens now, and starting it.

Backends say which file or device a VM opens for each volume
(``snaptree_volume_path``); a plugin that knows how to start the group's VM
(a toolstack, or the qcow2 plugin's launch recipe) does so in
``snaptree_vm_start``.  ``snaptree start GROUP`` and the reverts that need a
fresh QEMU both come through here.
"""

from __future__ import annotations

import socket
from typing import Any

from .errors import Conflict, InvalidInput, NotSupported
from .model import Group, OpContext

__all__ = ["current_images", "start", "answers"]


def current_images(hook: Any, group: Group) -> dict[str, str]:
    """Volume locator -> the file or device the VM must open for it now."""
    images = {}
    for volume in group.volumes:
        path = hook.snaptree_volume_path(backend=volume.backend, volume=volume)
        images[volume.locator] = path or volume.locator
    return images


def answers(socket_path: str | None) -> bool:
    """True when something accepts connections on the unix socket ``socket_path``."""
    if not socket_path:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(socket_path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def start(hook: Any, group: Group, ctx: OpContext, *, incoming: bool = False) -> None:
    """Start ``group``'s VM paused through the first plugin that can; raise if none can."""
    if not group.qmp_socket:
        raise InvalidInput(f"group {group.name!r} has no QMP socket (group create --qmp SOCKET)")
    if answers(group.qmp_socket):
        raise Conflict(f"a QEMU already answers on {group.qmp_socket}")
    if hook.snaptree_vm_startable(group=group) is None:
        raise NotSupported(
            f"no plugin can start the VM of group {group.name!r}: give the group a launch "
            "recipe (-o qemu.launch=FILE) or install the toolstack's snaptree plugin")
    started = hook.snaptree_vm_start(group=group, images=current_images(hook, group),
                                     incoming=incoming, ctx=ctx)
    if not started:
        raise NotSupported(f"no plugin started the VM of group {group.name!r}")
