"""Stopping a group's QEMU and starting it again from its launch recipe.

Some reverts cannot happen inside a running QEMU: a device cannot move to a
new overlay, QEMU loads only snapshots with a vmstate into a running VM, and
a memory *file* is read only by a QEMU started with ``-incoming``.  libvirt
can do these because it owns the QEMU command line; snaptree owns it only
when the group names a **launch recipe** (group option ``qemu.launch``), a
JSON file the toolstack writes::

    {"argv": ["qemu-system-x86_64", "-m", "512", "-nodefaults",
              "-blockdev", "driver=file,filename={active:/vm/disk0.qcow2},node-name=f0",
              "-blockdev", "driver=qcow2,file=f0,node-name=d0",
              "-device", "virtio-blk-pci,drive=d0"]}

``{active:IMAGE}`` stands for the image volume ``IMAGE`` runs on now (the
registered image, or an overlay after external snapshots and reverts).
snaptree adds ``-S -daemonize -qmp unix:SOCKET,server=on,wait=off`` and, to
load a memory file, ``-incoming defer``.  A toolstack that starts its VMs
itself implements :func:`snaptree.hookspecs.snaptree_vm_start` instead.
"""

from __future__ import annotations

import json
import os
import re
import select
from typing import Mapping, Sequence

import attrs

from snaptree.errors import BackendError, InvalidInput, NotFound
from snaptree.names import check_abs_path
from snaptree.runner import CommandRunner

from .layout import active_image

__all__ = ["OPTION", "Recipe", "disk_args", "shut_down", "write_recipe"]

#: the group option naming the recipe file
OPTION = "qemu.launch"
PLACEHOLDER = re.compile(r"\{active:([^{}]+)\}")
#: options snaptree adds itself; a recipe that sets them would fight it
_RESERVED = ("-incoming", "-daemonize", "-qmp", "-S", "-loadvm")
_MAX_RECIPE_BYTES = 1 << 20


@attrs.frozen
class Recipe:
    """A validated launch recipe for one group's VM."""

    path: str
    argv: tuple[str, ...]

    @classmethod
    def load(cls, path: str, images: Sequence[str], qmp_socket: str) -> "Recipe":
        """Read and check the recipe at ``path`` for a VM running ``images``."""
        path = check_abs_path(path, f"{OPTION} recipe")
        try:
            with open(path, "rb") as handle:
                raw = handle.read(_MAX_RECIPE_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(f"qcow2: launch recipe {path} does not exist") from None
        except OSError as err:
            raise InvalidInput(f"qcow2: cannot read launch recipe {path}: {err.strerror}") from err
        if len(raw) > _MAX_RECIPE_BYTES:
            raise InvalidInput(f"qcow2: launch recipe {path} is larger than 1 MiB")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidInput(f"qcow2: launch recipe {path} is not JSON: {err}") from err
        argv = doc.get("argv") if isinstance(doc, dict) else None
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) and a and "\0" not in a for a in argv)):
            raise InvalidInput(f"qcow2: launch recipe {path} needs \"argv\": a list of non-empty strings")
        for arg in argv:
            if arg in _RESERVED or (arg.startswith("--") and arg[1:] in _RESERVED):
                raise InvalidInput(f"qcow2: launch recipe {path} sets {arg}, which snaptree adds itself")
            if qmp_socket in arg:
                raise InvalidInput(f"qcow2: launch recipe {path} names the QMP socket {qmp_socket}; "
                                   "snaptree adds -qmp for it")
        named = {m.group(1) for a in argv for m in PLACEHOLDER.finditer(a)}
        unknown = sorted(named - set(images))
        if unknown:
            raise InvalidInput(f"qcow2: launch recipe {path} names {{active:{unknown[0]}}}, "
                               "which is no qcow2 volume of the group")
        missing = [i for i in images if i not in named]
        if missing:
            raise InvalidInput(f"qcow2: launch recipe {path} never opens {{active:{missing[0]}}}; "
                               "the VM would not see that disk after a revert")
        return cls(path, tuple(argv))

    def command(self, qmp_socket: str, *, incoming: bool,
                images: Mapping[str, str] | None = None) -> list[str]:
        """The argv that starts the VM paused, with a QMP monitor on ``qmp_socket``.

        :param images: registered image -> image to open; by default the
            active image of each.
        """
        def fill(arg: str) -> str:
            def one(match: re.Match) -> str:
                image = match.group(1)
                target = images[image] if images is not None else active_image(image)
                # JSON-syntax options take JSON string text; key=value ones
                # need a comma doubled to stay part of the value
                if arg.lstrip().startswith("{"):
                    return json.dumps(target)[1:-1]
                return target.replace(",", ",,")
            return PLACEHOLDER.sub(one, arg)

        argv = [fill(a) for a in self.argv]
        argv += ["-S", "-daemonize", "-qmp", f"unix:{qmp_socket.replace(',', ',,')},server=on,wait=off"]
        if incoming:
            argv += ["-incoming", "defer"]
        return argv

    def start(self, runner: CommandRunner, qmp_socket: str, *, incoming: bool,
              images: Mapping[str, str] | None = None) -> None:
        """Start the VM paused; return once its QMP socket listens.

        ``-daemonize`` makes QEMU's first process exit only when the VM is
        set up (socket bound) or has failed, so its exit status says which.
        """
        runner.run(self.command(qmp_socket, incoming=incoming, images=images), timeout=120)


def disk_args(images: Sequence[str]) -> list[str]:
    """QEMU arguments attaching each image as a virtio disk, for a recipe.

    Disk ``i`` gets file node ``file<i>``, qcow2 node ``disk<i>`` and device
    ``vd<i>`` (``share-rw=on``, so the monitor's ``qemu-io`` may write beside
    the guest); its file is the ``{active:IMAGE}`` placeholder.
    """
    args: list[str] = []
    for index, image in enumerate(images):
        args += ["-blockdev", f"driver=file,filename={{active:{image}}},node-name=file{index}",
                 "-blockdev", f"driver=qcow2,file=file{index},node-name=disk{index}",
                 "-device", f"virtio-blk-pci,drive=disk{index},id=vd{index},share-rw=on"]
    return args


def write_recipe(path: str, argv: Sequence[str]) -> str:
    """Write a launch recipe holding ``argv`` to ``path``; returns ``path``."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"argv": list(argv)}, handle, indent=1)
    return path


def shut_down(session, socket_path: str, timeout: float = 60.0) -> None:
    """Tell the QEMU behind ``session`` to quit and wait until its process is gone.

    QEMU flushes and unlocks its images as it exits; only then may
    ``qemu-img`` touch them.  The wait is on a pidfd, not a sleep loop.
    """
    pid = session.peer_pid
    pidfd = None
    if pid is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    try:
        try:
            session.execute("quit")
        except BackendError:
            pass  # QEMU may close the socket before its reply arrives
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(timeout * 1000):
                raise BackendError(f"qcow2: QEMU (pid {pid}) did not exit within {timeout:.0f}s of quit")
    finally:
        if pidfd is not None:
            os.close(pidfd)
