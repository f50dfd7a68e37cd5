"""Volume provisioners for snaptree's own four backends.

They follow the same protocol a third party implements
(:class:`benchmarks.provision.Provisioner`); nothing here is reachable only
by the built-in backends.  :func:`builtin_provisioners` returns the registry
``backend name -> factory`` that :func:`benchmarks.provision.discover` uses
when a plugin does not bring its own.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

from .primitives import BtrfsIoctl, FileClone, LvmSnapshot, QemuImgSnapshot, lvm
from .provision import BenchVolume, Provisioner
from .snapper import Snapper
from .storage import (CAPACITY_MIB, MIB, ScratchFS, fill_file, fs_type, has_device_mapper, run,
                      write_pattern)

__all__ = ["builtin_provisioners", "RawProvisioner", "BtrfsProvisioner",
           "Qcow2Provisioner", "LvmProvisioner"]


def _file_writer(path: str) -> Callable[[int, int, int], None]:
    def write(offset: int, length: int, seed: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            write_pattern(fd, offset, length, seed)
        finally:
            os.close(fd)
    return write


class _OnScratch:
    """Shared part: volumes live in directories of one scratch filesystem."""

    name = backend = description = ""
    primitive: Any = None
    supports_files = False

    def __init__(self, fs: ScratchFS):
        self.fs = fs
        self.root = ""
        self.comparators: dict[str, Any] = {}
        self.group_options: dict[str, Any] = {}

    def unavailable(self) -> str | None:
        return self.fs.unavailable()

    def start(self, workdir: str) -> None:
        self.root = self.fs.start(workdir)

    def stop(self) -> None:
        self.fs.stop()

    def used_bytes(self) -> int | None:
        return self.fs.used_bytes()

    def _volume_dir(self, name: str) -> str:
        folder = os.path.join(self.root, self.name.replace("@", "-"), name)
        os.makedirs(folder)
        return folder


class RawProvisioner(_OnScratch):
    """Raw image files on ext4 (full copies) or btrfs (reflinks)."""

    backend = "raw"

    def __init__(self, fs: ScratchFS):
        super().__init__(fs)
        self.name = f"raw@{fs.kind}"
        reflink = fs.kind == "btrfs"
        self.description = (f"raw image on a loop-mounted {fs.kind}" if fs.kind != "dir"
                            else "raw image in a plain directory")
        self.primitive = FileClone(reflink=reflink)

    def start(self, workdir: str) -> None:
        super().start(workdir)
        if self.fs.kind == "dir":
            self.description = f"raw image in a plain directory on {fs_type(self.root)}"

    def make_volume(self, name: str, size_mib: int, files: int = 0) -> BenchVolume:
        folder = self._volume_dir(name)
        image = os.path.join(folder, "disk.img")
        fill_file(image, size_mib, capacity_mib=CAPACITY_MIB)
        return BenchVolume(spec=f"raw:{image}", write=_file_writer(image),
                           cleanup=lambda: shutil.rmtree(folder, ignore_errors=True),
                           data={"image": image})


def _make_small_files(root: str, count: int) -> None:
    """``count`` files of 4 KiB in directories of 1000, like a guest's tree."""
    payload = os.urandom(4096)
    for index in range(count):
        folder = os.path.join(root, "files", f"d{index // 1000:03d}")
        if index % 1000 == 0:
            os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{index:06d}"), "wb") as handle:
            handle.write(payload)


def _delete_subvolumes(folder: str) -> None:
    """Delete every subvolume below ``folder``, deepest first, then the tree."""
    found = []
    for dirpath, dirnames, _ in os.walk(folder):
        for dirname in dirnames:
            path = os.path.join(dirpath, dirname)
            if not os.path.islink(path) and os.stat(path).st_ino == 256:
                found.append(path)
    for path in sorted(found, key=len, reverse=True):
        try:
            run(["btrfs", "property", "set", "-ts", path, "ro", "false"])
            run(["btrfs", "subvolume", "delete", path])
        except RuntimeError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


class BtrfsProvisioner(_OnScratch):
    """btrfs subvolumes holding a disk image and, optionally, many small files."""

    backend = "btrfs"
    name = "btrfs@btrfs"
    description = "btrfs subvolume on a loop-mounted btrfs"
    supports_files = True

    def __init__(self, fs: ScratchFS):
        super().__init__(fs)
        self.primitive = BtrfsIoctl()
        if Snapper.unavailable() is None:
            self.comparators = {"snapper": Snapper()}

    def make_volume(self, name: str, size_mib: int, files: int = 0) -> BenchVolume:
        folder = self._volume_dir(name)
        subvolume = os.path.join(folder, "vol")
        run(["btrfs", "subvolume", "create", subvolume])
        image = os.path.join(subvolume, "disk.img")
        fill_file(image, size_mib, capacity_mib=CAPACITY_MIB)
        _make_small_files(subvolume, files)

        def write(offset: int, length: int, seed: int) -> None:
            # the path, not a held descriptor: a revert swaps the subvolume
            _file_writer(image)(offset, length, seed)

        return BenchVolume(spec=f"btrfs:{subvolume}", write=write,
                           cleanup=lambda: _delete_subvolumes(folder),
                           data={"subvolume": subvolume, "image": image})


class Qcow2Provisioner(_OnScratch):
    """qcow2 images, snapshotted offline (no VM running)."""

    backend = "qcow2"

    def __init__(self, fs: ScratchFS):
        super().__init__(fs)
        self.name = f"qcow2@{fs.kind}"
        self.description = f"qcow2 image (offline, internal snapshots) on {fs.kind}"
        self.primitive = QemuImgSnapshot()
        self.group_options = {"qcow2.mode": "internal"}

    def unavailable(self) -> str | None:
        for tool in ("qemu-img", "qemu-io"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        return super().unavailable()

    def make_volume(self, name: str, size_mib: int, files: int = 0) -> BenchVolume:
        folder = self._volume_dir(name)
        raw, image = os.path.join(folder, "fill.raw"), os.path.join(folder, "disk.qcow2")
        fill_file(raw, size_mib, capacity_mib=CAPACITY_MIB)
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image])
        os.unlink(raw)

        def write(offset: int, length: int, seed: int) -> None:
            run(["qemu-io", "-f", "qcow2", "-c",
                 f"write -P {seed % 251 + 1} {offset} {length}", "-c", "flush", image])

        return BenchVolume(spec=f"qcow2:{image}", write=write,
                           cleanup=lambda: shutil.rmtree(folder, ignore_errors=True),
                           data={"image": image})


class LvmProvisioner:
    """Logical volumes in a volume group on a loop device (needs device-mapper)."""

    name = "lvm@loop"
    backend = "lvm"
    description = "LVM logical volume on a loop device, classic snapshots"
    supports_files = False

    def __init__(self) -> None:
        self.primitive = LvmSnapshot()
        self.comparators: dict[str, Any] = {}
        self.group_options: dict[str, Any] = {}
        self.vg = f"snaptreebench{os.getpid()}"
        self.image = self.loop = None

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root"
        if not has_device_mapper():
            return "no device-mapper in this kernel"
        for tool in ("lvm", "losetup"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        return None

    def start(self, workdir: str) -> None:
        if self.loop:
            return
        self.image = os.path.join(workdir, "lvm.img")
        with open(self.image, "wb") as image:
            image.truncate(48 * 1024 * MIB)
        self.loop = run(["losetup", "-f", "--show", self.image]).strip()
        lvm("pvcreate", "-f", self.loop)
        lvm("vgcreate", self.vg, self.loop)

    def stop(self) -> None:
        steps = [lambda: lvm("vgremove", "-f", self.vg), lambda: lvm("pvremove", "-f", self.loop),
                 lambda: run(["losetup", "-d", self.loop])]
        for step in steps if self.loop else ():
            try:
                step()
            except RuntimeError:
                pass
        if self.image and os.path.exists(self.image):
            os.unlink(self.image)
        self.loop = None

    def used_bytes(self) -> int | None:
        out = lvm("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_size,vg_free",
                  self.vg).split()
        return int(out[0]) - int(out[1])

    def make_volume(self, name: str, size_mib: int, files: int = 0) -> BenchVolume:
        lvm("lvcreate", "-y", "-L", f"{max(size_mib, CAPACITY_MIB)}m", "-n", name, self.vg)
        device = f"/dev/{self.vg}/{name}"
        writer = _file_writer(device)
        if size_mib:
            writer(0, size_mib * MIB, 0)

        def cleanup() -> None:
            lvm("lvremove", "-f", f"{self.vg}/{name}")

        return BenchVolume(spec=f"lvm:{self.vg}/{name}", write=writer, cleanup=cleanup,
                           data={"vg": self.vg, "lv": name, "device": device})


def builtin_provisioners() -> dict[str, Callable[[], list[Provisioner]]]:
    """backend name -> factory of its provisioners, sharing scratch filesystems."""
    ext4 = ScratchFS("ext4")
    if ext4.unavailable() is not None:
        ext4 = ScratchFS("dir")  # no root: a plain directory still benchmarks raw
    btrfs = ScratchFS("btrfs")
    return {
        "raw": lambda: [RawProvisioner(ext4), RawProvisioner(btrfs)],
        "btrfs": lambda: [BtrfsProvisioner(btrfs)],
        "qcow2": lambda: [Qcow2Provisioner(ext4)],
        "lvm": lambda: [LvmProvisioner()],
    }
