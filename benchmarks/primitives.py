"""The bare operations snaptree's own backends wrap, for the overhead ratio.

Each class does per volume, with no catalog, lock or journal, what the
backend does: clone a file, snapshot a subvolume, add a qcow2 snapshot, make
a snapshot LV.  Durability matches the backend's (file clones are fsynced),
so the ratio shows framework cost, not a skipped fsync.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from .provision import BenchVolume
from .storage import run

__all__ = ["FileClone", "BtrfsIoctl", "QemuImgSnapshot", "LvmSnapshot",
           "btrfs_snapshot", "btrfs_destroy", "lvm"]

FICLONE = 0x40049409


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileClone:
    """A file copy: the FICLONE ioctl on a reflink filesystem, else ``cp``.

    ``cp --reflink=auto --sparse=always`` is what an administrator would type
    to copy a sparse image; it is followed by an fsync like the backend's.
    """

    def __init__(self, reflink: bool):
        self.reflink = reflink
        self.label = "FICLONE ioctl" if reflink else "cp --sparse=always + fsync"

    @staticmethod
    def _snapshot_path(volume: BenchVolume, tag: str) -> str:
        image = volume.data["image"]
        return os.path.join(os.path.dirname(image), f"prim-{tag}-{os.path.basename(image)}")

    def _clone(self, src: str, dst: str) -> None:
        if self.reflink:
            with open(src, "rb") as source, open(dst, "wb") as target:
                fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
                os.fsync(target.fileno())
        else:
            run(["cp", "--reflink=auto", "--sparse=always", src, dst])
            _fsync_path(dst)

    def create(self, volume: BenchVolume, tag: str) -> None:
        self._clone(volume.data["image"], self._snapshot_path(volume, tag))

    def revert(self, volume: BenchVolume, tag: str) -> None:
        image = volume.data["image"]
        temp = image + ".prim-revert"
        self._clone(self._snapshot_path(volume, tag), temp)
        os.replace(temp, image)

    def delete(self, volume: BenchVolume, tag: str) -> None:
        os.unlink(self._snapshot_path(volume, tag))


# -- btrfs ioctls (linux/btrfs.h) ----------------------------------------------

_BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417   # _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
_BTRFS_IOC_SNAP_DESTROY = 0x5000940F     # _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
_BTRFS_SUBVOL_RDONLY = 1 << 1


class _VolArgsV2(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int64), ("transid", ctypes.c_uint64),
                ("flags", ctypes.c_uint64), ("unused", ctypes.c_uint64 * 4),
                ("name", ctypes.c_char * 4040)]


class _VolArgs(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int64), ("name", ctypes.c_char * 4088)]


def btrfs_snapshot(source: str, target: str, *, read_only: bool) -> None:
    """Snapshot subvolume ``source`` as ``target`` with one ioctl."""
    parent, name = os.path.split(target)
    src_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            args = _VolArgsV2(fd=src_fd, flags=_BTRFS_SUBVOL_RDONLY if read_only else 0,
                              name=name.encode())
            fcntl.ioctl(dir_fd, _BTRFS_IOC_SNAP_CREATE_V2, args)
        finally:
            os.close(dir_fd)
    finally:
        os.close(src_fd)


def btrfs_destroy(path: str) -> None:
    """Delete subvolume ``path`` with one ioctl (the cleaner frees space later)."""
    parent, name = os.path.split(path)
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(dir_fd, _BTRFS_IOC_SNAP_DESTROY, _VolArgs(name=name.encode()))
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise
    finally:
        os.close(dir_fd)


class BtrfsIoctl:
    """Subvolume snapshots through the btrfs ioctls, no ``btrfs`` program.

    Revert makes a writable snapshot of the snapshot and swaps it in with
    two renames, then drops the old subvolume: the usual atomic-swap way.
    """

    label = "btrfs ioctl (SNAP_CREATE_V2)"

    @staticmethod
    def _snapshot_path(volume: BenchVolume, tag: str) -> str:
        subvol = volume.data["subvolume"]
        return os.path.join(os.path.dirname(subvol), f"prim-{tag}-{os.path.basename(subvol)}")

    def create(self, volume: BenchVolume, tag: str) -> None:
        btrfs_snapshot(volume.data["subvolume"], self._snapshot_path(volume, tag), read_only=True)

    def revert(self, volume: BenchVolume, tag: str) -> None:
        subvol = volume.data["subvolume"]
        btrfs_snapshot(self._snapshot_path(volume, tag), subvol + ".prim-new", read_only=False)
        os.rename(subvol, subvol + ".prim-old")
        os.rename(subvol + ".prim-new", subvol)
        btrfs_destroy(subvol + ".prim-old")

    def delete(self, volume: BenchVolume, tag: str) -> None:
        btrfs_destroy(self._snapshot_path(volume, tag))


class QemuImgSnapshot:
    """Internal qcow2 snapshots with ``qemu-img snapshot -c/-a/-d`` (offline)."""

    label = "qemu-img snapshot"

    def create(self, volume: BenchVolume, tag: str) -> None:
        run(["qemu-img", "snapshot", "-c", f"prim-{tag}", volume.data["image"]])

    def revert(self, volume: BenchVolume, tag: str) -> None:
        run(["qemu-img", "snapshot", "-a", f"prim-{tag}", volume.data["image"]])

    def delete(self, volume: BenchVolume, tag: str) -> None:
        run(["qemu-img", "snapshot", "-d", f"prim-{tag}", volume.data["image"]])


#: LVM without a udev daemon: do not wait for udev to create device nodes.
LVM_ENV = {"DM_DISABLE_UDEV": "1", "LVM_SUPPRESS_FD_WARNINGS": "1"}
_NO_UDEV = ["--config", "activation{udev_sync=0 udev_rules=0}"]


def lvm(command: str, *args: str) -> str:
    """Run ``lvm COMMAND`` without waiting for udev (hosts and guests have none)."""
    return run(["lvm", command, *_NO_UDEV, *args], env=LVM_ENV)


class LvmSnapshot:
    """Classic LVM snapshots: ``lvcreate -s``, ``lvconvert --merge``, ``lvremove``.

    A merge consumes the snapshot, so the benchmark makes a new one before
    each timed revert (``revert_consumes``).
    """

    label = "lvcreate -s"
    revert_consumes = True

    def __init__(self, cow_mib: int = 256):
        self.cow_mib = cow_mib

    def _name(self, volume: BenchVolume, tag: str) -> str:
        return f"{volume.data['vg']}/prim-{tag}-{volume.data['lv']}"

    def create(self, volume: BenchVolume, tag: str) -> None:
        lvm("lvcreate", "-s", "-L", f"{self.cow_mib}m", "-n", self._name(volume, tag).split("/")[1],
            f"{volume.data['vg']}/{volume.data['lv']}")

    def revert(self, volume: BenchVolume, tag: str) -> None:
        lvm("lvconvert", "--merge", self._name(volume, tag))

    def delete(self, volume: BenchVolume, tag: str) -> None:
        lvm("lvremove", "-f", self._name(volume, tag))
