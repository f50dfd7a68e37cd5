"""File cloning for the raw backend: its one I/O boundary.

``clone_file`` makes ``dst`` a copy of ``src`` with a reflink (FICLONE) where
the filesystem shares extents (btrfs, xfs), otherwise with a sparse-aware
copy that skips holes and reports progress.  Every ``OSError`` is mapped to
snaptree's error tree here.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Callable

from snaptree.errors import BackendError, OutOfSpace, PermissionDenied, VolumeNotFound
from snaptree.fileattrs import copy_xattrs

__all__ = ["clone_file", "fsync_dir", "map_oserror", "carry_attributes", "CHUNK"]

FICLONE = 0x40049409
CHUNK = 32 * 1024 * 1024
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM}


def map_oserror(err: OSError, what: str) -> BackendError:
    """One mapping of OSError to the error tree for the raw backend."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"raw: out of space while {what}")
    if err.errno == errno.ENOENT:
        return VolumeNotFound(f"raw: {what}: {err.filename or ''} does not exist")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"raw: {what}: {err.strerror}")
    return BackendError(f"raw: {what}: {err.strerror or err}")


def carry_attributes(image: str, old: os.stat_result, temp: str) -> None:
    """Give ``temp``, about to replace ``image``, what the image's file (not
    its data) carried: owner (as root), extended attributes (an SELinux or
    sVirt label, POSIX ACLs, ``user.*`` notes) and mode.  The mode goes last:
    a chown clears set-id bits and an ACL rewrites the group bits."""
    if os.geteuid() == 0:
        os.chown(temp, old.st_uid, old.st_gid)
    copy_xattrs(image, temp)
    os.chmod(temp, old.st_mode & 0o7777)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as err:
        if err.errno in _NO_REFLINK:
            return False
        raise


_use_copy_file_range = hasattr(os, "copy_file_range")


def _copy_range(src_fd: int, dst_fd: int, length: int, position: int) -> int:
    """Copy one data extent at the same offset; in the kernel where it can."""
    global _use_copy_file_range
    if _use_copy_file_range:
        try:
            return os.copy_file_range(src_fd, dst_fd, length, position, position)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            _use_copy_file_range = False
    block = os.pread(src_fd, length, position)
    written = 0
    while written < len(block):
        written += os.pwrite(dst_fd, block[written:], position + written)
    return len(block)


def _sparse_copy(src_fd: int, dst_fd: int, size: int, progress: Callable[..., None], label: str) -> None:
    offset = 0
    copied = 0
    while offset < size:
        try:
            data_start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        hole_start = os.lseek(src_fd, data_start, os.SEEK_HOLE)
        position = data_start
        while position < hole_start:
            length = min(CHUNK, hole_start - position)
            moved = _copy_range(src_fd, dst_fd, length, position)
            if not moved:
                break
            position += moved
            copied += moved
            progress(position, size, label)
        offset = hole_start
    os.ftruncate(dst_fd, size)
    progress(size, size, label)


def clone_file(src: str, dst: str, *, progress: Callable[..., None], label: str,
               allow_reflink: bool = True) -> str:
    """Write ``dst`` (created, must not exist) as a copy of ``src``; fsync it.

    :returns: ``"reflink"`` or ``"copy"``, the method used.
    """
    src_fd = os.open(src, os.O_RDONLY)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            method = "reflink" if allow_reflink and _reflink(src_fd, dst_fd) else "copy"
            if method == "copy":
                _sparse_copy(src_fd, dst_fd, os.fstat(src_fd).st_size, progress, label)
            os.fsync(dst_fd)
        except BaseException:
            os.close(dst_fd)
            dst_fd = -1
            try:
                os.unlink(dst)
            except OSError:
                pass
            raise
        finally:
            if dst_fd >= 0:
                os.close(dst_fd)
    finally:
        os.close(src_fd)
    return method
