"""The qcow2 backend's one subprocess boundary: ``qemu-img``.

Every call goes through one :class:`snaptree.runner.CommandRunner` (argument
lists, timing, fault injection).  A failure to take QEMU's image lock becomes
:class:`~snaptree.errors.VolumeInUse` with a hint to make the group with
its QMP socket (``group create --qmp`` or ``group set --qmp``), because
that is the one mistake users make here.
"""

from __future__ import annotations

import json
from typing import Any

from snaptree.errors import CommandFailed, VolumeInUse
from snaptree.runner import CommandRunner

__all__ = ["QemuImg", "LOCK_MARKERS"]

#: stderr fragments of qemu-img when a running QEMU holds the image
LOCK_MARKERS = ('Failed to get "write" lock', 'Failed to get shared "write" lock',
                'Failed to get "consistent read" lock')


class QemuImg:
    """Typed wrappers over the ``qemu-img`` subcommands the backend needs."""

    def __init__(self, runner: CommandRunner | None = None):
        self.runner = runner or CommandRunner("qcow2")

    def _run(self, argv: list[str], image: str) -> str:
        try:
            return self.runner.run(argv).stdout
        except CommandFailed as err:
            if any(marker in err.stderr for marker in LOCK_MARKERS):
                raise VolumeInUse(
                    f"qcow2: {image} is in use by another process (a running QEMU?); stop it, "
                    "or, for a VM's own disks, work through its QMP socket: "
                    "'snaptree group set GROUP --qmp SOCKET' (or 'group create ... --qmp SOCKET')",
                    detail=err.stderr) from err
            raise

    def info(self, image: str) -> dict[str, Any]:
        """``qemu-img info`` of one image; read with force-share, so it works on live images."""
        out = self._run(["qemu-img", "info", "-U", "--output=json", image], image)
        return json.loads(out)

    def snapshot_create(self, image: str, tag: str) -> None:
        self._run(["qemu-img", "snapshot", "-c", tag, image], image)

    def snapshot_apply(self, image: str, tag: str) -> None:
        self._run(["qemu-img", "snapshot", "-a", tag, image], image)

    def snapshot_delete(self, image: str, tag: str) -> None:
        self._run(["qemu-img", "snapshot", "-d", tag, image], image)

    def create_overlay(self, overlay: str, backing: str, size: int | None = None) -> None:
        """Create a qcow2 ``overlay`` on top of qcow2 ``backing`` (absolute path kept).

        With ``size`` (bytes) ``backing`` is not opened: a running QEMU may
        hold it.
        """
        unsafe = ["-u"] if size is not None else []
        self._run(["qemu-img", "create", "-q", "-f", "qcow2", *unsafe, "-b", backing, "-F", "qcow2",
                   overlay, *([str(size)] if size is not None else [])], overlay)

    def copy_snapshot(self, image: str, tag: str, target: str, backing: str | None,
                      backing_format: str | None) -> None:
        """Write internal snapshot ``tag`` of ``image`` to a new qcow2 ``target``.

        With ``backing`` (``image``'s own backing file) the copy is built on
        it and holds only what ``image`` itself held at the snapshot; the
        copy has no internal snapshots and no VM state.
        """
        argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2",
                "-l", f"snapshot.name={tag}"]
        if backing:
            argv += ["-B", backing, "-F", backing_format or "qcow2"]
        self._run(argv + [image, target], image)

    def commit(self, overlay: str) -> None:
        """Merge ``overlay`` into its backing image (the overlay is left empty)."""
        self._run(["qemu-img", "commit", "-q", "-f", "qcow2", overlay], overlay)

    def rebase_unsafe(self, image: str, backing: str) -> None:
        """Point ``image``'s header at ``backing`` without touching data (same content)."""
        self._run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", backing,
                   "-F", "qcow2", image], image)

    def check_unheld(self, image: str) -> None:
        """Raise :class:`VolumeInUse` when another process holds ``image`` itself
        for writing (its backing images are not opened)."""
        # info opens without the backing chain; without -U it takes the
        # shared read lock, which a running QEMU refuses
        self._run(["qemu-img", "info", "--output=json", image], image)

    def check_writable(self, image: str) -> None:
        """Raise :class:`VolumeInUse` when a running QEMU holds ``image``'s write lock."""
        # ``qemu-img check`` opens read-write only with -r; a plain snapshot
        # listing without -U takes the shared read lock, which a running
        # QEMU refuses exactly when it holds the image for writing.
        self._run(["qemu-img", "snapshot", "-l", image], image)
