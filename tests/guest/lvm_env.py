"""Loop-backed LVM for the devmapper tests: a volume group with a thin pool.

Import the fixtures into a test module (``from guest.lvm_env import lvm_vg,
make_lv``).  Everything is made with the backend's own :class:`LvmCommands`
so the tests exercise the same udev setting as the backend.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess

import pytest

from snaptree_lvm.lvmcmd import LvmCommands

from .vng import host_has_devmapper

__all__ = ["DEVMAPPER_MARKS", "LoopVG", "lvm_vg", "make_lv", "write_pattern", "digest_device",
           "zero_device"]

_SKIP_REASON = ("this kernel has no device-mapper; tests/test_lvm_guest.py runs these tests "
                "inside a virtme-ng guest")

#: Marks for every test module that needs device-mapper and LVM.
DEVMAPPER_MARKS = [
    pytest.mark.devmapper,
    pytest.mark.root,
    pytest.mark.skipif(not host_has_devmapper(), reason=_SKIP_REASON),
    pytest.mark.skipif(shutil.which("lvm") is None, reason="needs lvm2"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and LVM"),
]

PV_BYTES = 768 * 1024 * 1024
POOL = "pool"


def write_pattern(device: str, seed: int, *, offset: int = 0, length: int = 1024 * 1024) -> None:
    """Write ``length`` bytes derived from ``seed`` at ``offset`` and flush them."""
    block = hashlib.sha256(f"snaptree:{seed}".encode()).digest()
    data = (block * (length // len(block) + 1))[:length]
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def zero_device(device: str) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        chunk = bytes(1024 * 1024)
        for start in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[: min(len(chunk), size - start)], start)
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_device(device: str) -> str:
    """SHA-256 of the whole device, read past the page cache of earlier opens."""
    digest = hashlib.sha256()
    with open(device, "rb", buffering=0) as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class LoopVG:
    """A volume group on a loop device over a sparse file, with a thin pool."""

    def __init__(self, directory: str, name: str):
        self.vg = name
        self.image = os.path.join(directory, f"{name}.img")
        self.cmds = LvmCommands()
        self.loop = ""
        self._counter = itertools.count(1)
        #: clean volumes handed back by tests, by (MiB, thin), for reuse
        self.spares: dict[tuple[int, bool], list[str]] = {}

    def setup(self, pool_mib: int = 192) -> "LoopVG":
        try:
            return self._setup(pool_mib)
        except BaseException:
            self.teardown()  # so that a retry starts from nothing
            raise

    def _setup(self, pool_mib: int) -> "LoopVG":
        with open(self.image, "wb") as f:
            f.truncate(PV_BYTES)
        self.loop = subprocess.run(["losetup", "-f", "--show", self.image], check=True,
                                   capture_output=True, text=True).stdout.strip()
        self.cmds.lvm("pvcreate", "-y", self.loop)
        self.cmds.lvm("vgcreate", "-y", self.vg, self.loop)
        self.cmds.lvm("lvcreate", "-y", "--type", "thin-pool", "-L", f"{pool_mib}M",
                      "-n", POOL, self.vg)
        # fail writes at once when the pool is full instead of queueing them for 60s
        self.cmds.lvm("lvchange", "--errorwhenfull", "y", f"{self.vg}/{POOL}")
        return self

    def teardown(self) -> None:
        try:
            if self.loop:
                self.cmds.runner.run(["lvm", "vgremove", *self.cmds.config_args(), "-ff", "-y",
                                      self.vg], check=False)
        finally:
            if self.loop:
                subprocess.run(["losetup", "-d", self.loop], check=False)
            if os.path.exists(self.image):
                os.unlink(self.image)

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self._counter)}"

    def create(self, name: str, mib: int, *, thin: bool = False, zero: bool = True) -> str:
        """Make ``name`` (thick linear, or thin in the pool) and return its device path."""
        if thin:
            self.cmds.lvm("lvcreate", "-y", "-V", f"{mib}M", "-T", f"{self.vg}/{POOL}", "-n", name)
        else:
            self.cmds.lvm("lvcreate", "-y", "-Zy", "-Wy", "-L", f"{mib}M", "-n", name, self.vg)
        path = self.device(name)
        if zero and not thin:
            zero_device(path)  # extents may hold data of LVs removed earlier
        return path

    def device(self, name: str) -> str:
        return f"/dev/{self.vg}/{name}"

    def remove_family(self, name: str, *, keep_origin: bool = False) -> bool:
        """Remove every LV named after ``name`` (snapshots, revert leftovers) and ``name``.

        With ``keep_origin``, ``name`` itself stays if it is closed and no
        revert is pending on it; returns whether it was kept.
        """
        existing = self.cmds.lv_map(self.vg)
        for info in existing.values():
            if info.name.startswith(name + ".") and not info.is_hidden:
                self.cmds.remove(self.vg, info.name)
        origin = existing.get(name)
        if origin is None:
            return False
        if keep_origin and not origin.is_open and not origin.is_merging and not origin.tags \
                and origin.is_active:
            return True
        self.cmds.remove(self.vg, name)
        return False


#: The session's VG and how many fixture instances use it.  Each test module
#: that imports ``lvm_vg`` gets its own session-scoped instance; they share one VG.
_SHARED: dict[str, object] = {"vg": None, "users": 0}


@pytest.fixture(scope="session")
def lvm_vg(tmp_path_factory):
    """One loop-backed VG with a thin pool for the whole session."""
    if _SHARED["vg"] is None:
        directory = str(tmp_path_factory.mktemp("lvm"))
        _SHARED["vg"] = LoopVG(directory, f"sntest{os.getpid()}").setup()
    _SHARED["users"] += 1
    try:
        yield _SHARED["vg"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            loop_vg, _SHARED["vg"] = _SHARED["vg"], None
            loop_vg.teardown()


@pytest.fixture
def make_lv(lvm_vg):
    """``make_lv(mib, thin=False, reuse=False) -> (vg, lv, device)``.

    Snapshots and leftovers are removed after the test.  With ``reuse`` the
    LV may be one an earlier test used (its snapshots gone, its content
    arbitrary) and goes back to the spares afterwards: creating and removing
    LVs is the slow part of these tests under an emulated CPU.
    """
    made: list[tuple[str, int, bool, bool]] = []

    def factory(mib: int = 8, *, thin: bool = False, prefix: str = "vol", reuse: bool = False):
        spares = lvm_vg.spares.setdefault((mib, thin), [])
        if reuse and spares:
            name = spares.pop()
            device = lvm_vg.device(name)
        else:
            name = lvm_vg.unique(prefix)
            device = lvm_vg.create(name, mib, thin=thin)
        made.append((name, mib, thin, reuse))
        return lvm_vg.vg, name, device

    yield factory
    for name, mib, thin, reuse in reversed(made):
        if lvm_vg.remove_family(name, keep_origin=reuse):
            lvm_vg.spares.setdefault((mib, thin), []).append(name)
