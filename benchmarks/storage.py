"""Scratch storage for the benchmarks: loop-mounted filesystems and data.

Each kind of storage gets its own small filesystem in a sparse file, so the
space a snapshot takes can be read from ``statvfs`` without the noise of a
shared disk.  Without root (no loop mounts) a plain directory is used and
space figures come from a shared filesystem; the results say which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Sequence

from snaptree.devices import kernel_has_device_mapper as has_device_mapper

__all__ = ["run", "has_device_mapper", "ScratchFS", "fill_file", "write_pattern", "fs_type", "MIB", "CAPACITY_MIB"]

MIB = 1024 * 1024
#: Sparse size of each loop filesystem; only what is written takes disk space.
LOOP_SIZE = 48 * 1024 * MIB
#: Virtual size of a benchmark volume; the data written is usually less.
CAPACITY_MIB = 1024


def run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> str:
    """Run a helper program (argument list, never a shell); return stdout."""
    full_env = None
    if env:
        full_env = dict(os.environ, **env)
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=full_env, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {last}")
    return proc.stdout


def fs_type(path: str) -> str:
    """The filesystem type holding ``path`` (from /proc/self/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")):
                    if len(fields[1]) >= len(best):
                        best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


class ScratchFS:
    """A filesystem of type ``kind`` mounted from a loop file, or a plain dir.

    :param kind: ``"ext4"``, ``"btrfs"`` or ``"dir"`` (no mount).
    """

    MKFS = {"ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
            "btrfs": ["mkfs.btrfs", "-q", "-f"]}

    def __init__(self, kind: str):
        self.kind = kind
        self.image: str | None = None
        self.path: str | None = None
        self.mounted = False

    def unavailable(self) -> str | None:
        if self.kind == "dir":
            return None
        if os.geteuid() != 0:
            return f"a loop-mounted {self.kind} needs root"
        if shutil.which(self.MKFS[self.kind][0]) is None:
            return f"{self.MKFS[self.kind][0]} is not installed"
        if not os.path.exists("/dev/loop-control"):
            return "no loop devices (/dev/loop-control missing)"
        return None

    def start(self, workdir: str) -> str:
        if self.path is not None:
            return self.path
        if self.kind == "dir":
            self.path = tempfile.mkdtemp(prefix="dir-", dir=workdir)
            return self.path
        self.image = os.path.join(workdir, f"{self.kind}.img")
        with open(self.image, "wb") as image:
            image.truncate(LOOP_SIZE)
        mountpoint = tempfile.mkdtemp(prefix=f"{self.kind}-", dir=workdir)
        run([*self.MKFS[self.kind], self.image])
        run(["mount", "-o", "loop", self.image, mountpoint])
        self.mounted, self.path = True, mountpoint
        return mountpoint

    def stop(self) -> None:
        if self.mounted and self.path:
            try:
                run(["umount", self.path])
                self.mounted = False
            except RuntimeError:
                run(["umount", "-l", self.path])  # a busy mount: detach lazily
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.image and os.path.exists(self.image):
            os.unlink(self.image)
        self.path = self.image = None

    def used_bytes(self) -> int | None:
        if self.path is None:
            return None
        if self.kind == "btrfs":
            # deleted subvolumes are freed by a background cleaner; wait for
            # it, or space freed from earlier cases is counted against this one
            run(["btrfs", "subvolume", "sync", self.path])
            run(["btrfs", "filesystem", "sync", self.path])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.sync()
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize


def _block(seed: int) -> bytes:
    """1 MiB of random bytes, one per ``seed``: nothing can compress or dedupe it."""
    if seed not in _BLOCKS:
        _BLOCKS[seed] = os.urandom(MIB)
    return _BLOCKS[seed]


_BLOCKS: dict[int, bytes] = {}


def write_pattern(fd: int, offset: int, length: int, seed: int) -> None:
    """Write ``length`` bytes at ``offset`` in 1 MiB blocks, each numbered, then fsync."""
    block = bytearray(_block(seed))
    end = offset + length
    position = offset
    while position < end:
        size = min(MIB, end - position)
        block[:8] = position.to_bytes(8, "little")
        os.pwrite(fd, memoryview(block)[:size], position)
        position += size
    os.fsync(fd)


def fill_file(path: str, size_mib: int, seed: int = 0, capacity_mib: int = 0) -> None:
    """Create ``path`` holding ``size_mib`` MiB of data, sparse up to ``capacity_mib``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, max(size_mib, capacity_mib) * MIB)
        if size_mib:
            write_pattern(fd, 0, size_mib * MIB, seed)
        else:
            os.fsync(fd)
    finally:
        os.close(fd)
