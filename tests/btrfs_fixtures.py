"""Real btrfs filesystems for tests: image file -> loop device -> mkfs.btrfs -> mount.

Import the fixtures into a test module (``from btrfs_fixtures import
btrfs_mount``) or use the context managers directly.  Loop devices are
waited for with :mod:`snaptree.devices`, never with sleeps.  Also here: a
deterministic tree writer and a byte-for-byte digest of a directory tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import stat
import subprocess
from typing import Iterator

import pytest

from snaptree.devices import DeviceWatcher

__all__ = [
    "loop_device",
    "btrfs_filesystem",
    "btrfs_mount",
    "make_subvolume",
    "write_tree",
    "digest_tree",
    "clear_tree",
]


def _run(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def loop_device(image: str) -> Iterator[str]:
    """Attach ``image`` to a free loop device; detach it afterwards."""
    with DeviceWatcher() as watcher:
        device = _run("losetup", "--find", "--show", image)
        watcher.wait_for_add(device, timeout=10)
    try:
        yield device
    except BaseException:
        # detach (deferred by the kernel while busy) without hiding the failure
        subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)
        raise
    with DeviceWatcher() as watcher:
        _run("losetup", "--detach", device)
        watcher.wait_for_remove(device, timeout=10)


@contextlib.contextmanager
def btrfs_filesystem(directory: str, size: str = "256M",
                     mkfs_args: tuple[str, ...] = ()) -> Iterator[str]:
    """A fresh btrfs mounted at ``directory/mnt``; yields the mount point."""
    image = os.path.join(directory, "btrfs.img")
    mountpoint = os.path.join(directory, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(_size_bytes(size))
    try:
        with loop_device(image) as device:
            _run("mkfs.btrfs", "-q", "-f", *mkfs_args, device)
            _run("mount", "-t", "btrfs", device, mountpoint)
            try:
                yield mountpoint
            finally:
                if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
                    # still busy (a test kept a file open): detach it lazily
                    _run("umount", "--lazy", mountpoint)
    finally:
        os.unlink(image)


def _size_bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


@pytest.fixture
def btrfs_mount(tmp_path) -> Iterator[str]:
    """A fresh 256 MiB btrfs, mounted; removed after the test."""
    with btrfs_filesystem(str(tmp_path)) as mountpoint:
        yield mountpoint


def make_subvolume(path: str) -> str:
    """Create a btrfs subvolume at ``path`` with the btrfs tool (test setup only)."""
    _run("btrfs", "subvolume", "create", path)
    return path


def clear_tree(root: str) -> None:
    """Remove everything inside ``root`` (not ``root`` itself)."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def write_tree(root: str, seed: int, *, files: int = 40, large_bytes: int = 3 << 20,
               sparse_bytes: int = 64 << 20) -> None:
    """Replace the content of ``root`` with a tree derived from ``seed``.

    Small files in nested directories, one large file of random bytes, one
    sparse file with data at a few offsets, a symlink and an empty file.
    """
    rng = random.Random(seed)
    clear_tree(root)
    for index in range(files):
        directory = os.path.join(root, f"d{index % 7}", f"e{index % 3}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{index}-{seed}.txt"), "wb") as handle:
            handle.write(rng.randbytes(rng.randrange(0, 9000)))
    with open(os.path.join(root, "large.bin"), "wb") as handle:
        handle.write(rng.randbytes(large_bytes))
    with open(os.path.join(root, "sparse.img"), "wb") as handle:
        handle.truncate(sparse_bytes)
        for _ in range(4):
            handle.seek(rng.randrange(0, sparse_bytes - 65536))
            handle.write(rng.randbytes(65536))
    os.symlink(f"large.bin#{seed}", os.path.join(root, "link"))
    open(os.path.join(root, "empty"), "wb").close()
    os.chmod(os.path.join(root, "large.bin"), 0o600 + seed % 2 * 0o40)


def digest_tree(root: str) -> str:
    """SHA-256 over every path, type, mode, symlink target and file byte under ``root``."""
    total = hashlib.sha256()
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            total.update(os.path.relpath(path, root).encode() + b"\0")
            total.update(f"{stat.S_IFMT(st.st_mode)}:{stat.S_IMODE(st.st_mode)}".encode())
            if stat.S_ISLNK(st.st_mode):
                total.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                total.update(st.st_size.to_bytes(8, "little"))
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        total.update(block)
    return total.hexdigest()
