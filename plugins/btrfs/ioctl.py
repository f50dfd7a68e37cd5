"""The btrfs kernel interface: the backend's one I/O boundary.

Snapshots are made and destroyed with the subvolume ioctls, directly through
:func:`fcntl.ioctl`, so a snapshot costs one system call and no process.  The
structures are laid out by hand from ``linux/btrfs.h``; every ``OSError``
raised here is mapped once to snaptree's error tree by :func:`map_oserror`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct

from snaptree.errors import (
    BackendError,
    Conflict,
    InvalidInput,
    OutOfSpace,
    PermissionDenied,
    SnaptreeError,
    VolumeNotFound,
)

__all__ = [
    "BTRFS_SUPER_MAGIC",
    "FIRST_FREE_OBJECTID",
    "SUBVOL_NAME_MAX",
    "map_oserror",
    "fs_type",
    "fs_uuid",
    "is_subvolume",
    "subvolume_id",
    "create_snapshot",
    "destroy_subvolume",
    "get_readonly",
    "set_readonly",
    "rename_exchange",
    "syncfs",
    "child_subvolumes",
    "default_subvolume",
    "qgroup_usage",
    "open_dir",
]

BTRFS_SUPER_MAGIC = 0x9123683E
#: The inode number of every subvolume's root directory.
FIRST_FREE_OBJECTID = 256
SUBVOL_NAME_MAX = 4039

_MAGIC = 0x94
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


_VOL_ARGS_SIZE = 4096          # struct btrfs_ioctl_vol_args and _v2 are both 4 KiB
_SEARCH_ARGS_SIZE = 4096
_FS_INFO_SIZE = 1024

IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, 15, _VOL_ARGS_SIZE)
IOC_TREE_SEARCH = _ioc(_IOC_READ | _IOC_WRITE, 17, _SEARCH_ARGS_SIZE)
IOC_INO_LOOKUP = _ioc(_IOC_READ | _IOC_WRITE, 18, 4096)
IOC_SNAP_CREATE_V2 = _ioc(_IOC_WRITE, 23, _VOL_ARGS_SIZE)
IOC_SUBVOL_GETFLAGS = _ioc(_IOC_READ, 25, 8)
IOC_SUBVOL_SETFLAGS = _ioc(_IOC_WRITE, 26, 8)
IOC_FS_INFO = _ioc(_IOC_READ, 31, _FS_INFO_SIZE)
IOC_GET_SUBVOL_ROOTREF = _ioc(_IOC_READ | _IOC_WRITE, 61, 4096)
IOC_SNAP_DESTROY_V2 = _ioc(_IOC_WRITE, 63, _VOL_ARGS_SIZE)

SUBVOL_RDONLY = 1 << 1

# struct btrfs_ioctl_vol_args_v2: fd, transid, flags, a 32-byte union, name.
_V2_HEAD = struct.Struct("=qQQ32x")
_V1_HEAD = struct.Struct("=q")

_ROOT_TREE_OBJECTID = 1
_ROOT_TREE_DIR_OBJECTID = 6
_FS_TREE_OBJECTID = 5
_DIR_ITEM_KEY = 84
_ROOT_REF_KEY = 156
_QUOTA_TREE_OBJECTID = 8
_QGROUP_STATUS_KEY = 240
_QGROUP_INFO_KEY = 242
_QGROUP_STATUS_INCONSISTENT = 1 << 2
_QGROUP_STATUS_RESCAN = 1 << 1
_SEARCH_KEY = struct.Struct("=7Q4I4Q")       # struct btrfs_ioctl_search_key (104 bytes)
_SEARCH_HEADER = struct.Struct("=3Q2I")      # struct btrfs_ioctl_search_header (32 bytes)
# struct btrfs_dir_item: location key (objectid, type, offset), transid, data_len, name_len, type
_DIR_ITEM = struct.Struct("<QBQQHHB")
# struct btrfs_ioctl_get_subvol_rootref_args: min_treeid, 255 x (treeid, dirid), num_items
_ROOTREF_MAX = 255
_ROOTREF_COUNT_AT = 8 + _ROOTREF_MAX * 16

_RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.syncfs.argtypes = [ctypes.c_int]


def map_oserror(err: OSError, what: str) -> SnaptreeError:
    """Map an ``OSError`` from a btrfs call to snaptree's error tree."""
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"btrfs: out of space while {what}")
    if code == errno.EROFS:
        return PermissionDenied(f"btrfs: {what}: the filesystem is mounted read-only")
    if code in (errno.EACCES, errno.EPERM):
        # as root, EPERM means btrfs refused for its own reasons (a default
        # subvolume, an active swap file), not that privileges are missing
        hint = "" if os.geteuid() == 0 else " (subvolume ioctls need root)"
        return PermissionDenied(f"btrfs: {what}: {err.strerror}{hint}")
    if code == errno.EEXIST:
        return Conflict(f"btrfs: {what}: {err.filename or 'the target'} already exists")
    if code == errno.ENOENT:
        return VolumeNotFound(f"btrfs: {what}: {err.filename or 'a path'} does not exist")
    if code in (errno.ENOTTY, errno.EOPNOTSUPP):
        return InvalidInput(f"btrfs: {what}: not a btrfs subvolume")
    if code == errno.EXDEV:
        return InvalidInput(f"btrfs: {what}: source and target are on different filesystems")
    return BackendError(f"btrfs: {what}: {err.strerror or err}")



def _raise_errno(what_path: str | None = None) -> None:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), what_path)


def open_dir(path: str) -> int:
    """Open a directory for ioctls (caller closes)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def fs_type(path: str) -> int:
    """The ``f_type`` magic of the filesystem holding ``path`` (``statfs(2)``)."""
    # struct statfs starts with f_type (a long on every Linux ABI we run on);
    # the buffer is larger than the struct on any architecture.
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        _raise_errno(path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def fs_uuid(fd: int) -> bytes:
    """The filesystem UUID of the btrfs holding ``fd`` (``BTRFS_IOC_FS_INFO``)."""
    buf = bytearray(_FS_INFO_SIZE)
    fcntl.ioctl(fd, IOC_FS_INFO, buf)
    return bytes(buf[16:32])


def is_subvolume(st: os.stat_result) -> bool:
    """True for the root directory of a subvolume (given it is on btrfs)."""
    return stat.S_ISDIR(st.st_mode) and st.st_ino == FIRST_FREE_OBJECTID


def subvolume_id(fd: int) -> int:
    """The subvolume (tree) id of the subvolume ``fd`` belongs to."""
    buf = bytearray(4096)
    struct.pack_into("=QQ", buf, 0, 0, FIRST_FREE_OBJECTID)
    fcntl.ioctl(fd, IOC_INO_LOOKUP, buf)
    return struct.unpack_from("=Q", buf, 0)[0]


def _name_bytes(name: str) -> bytes:
    raw = os.fsencode(name)
    if not raw or b"/" in raw or len(raw) > SUBVOL_NAME_MAX or raw in (b".", b".."):
        raise InvalidInput(f"btrfs: {name!r} is not a valid subvolume name")
    return raw


def create_snapshot(source_fd: int, dest_dir_fd: int, name: str, *, readonly: bool) -> None:
    """Snapshot the subvolume open as ``source_fd`` to ``name`` in ``dest_dir_fd``.

    One ``BTRFS_IOC_SNAP_CREATE_V2``; the kernel commits the transaction
    before returning, so the snapshot is durable when this returns.
    """
    buf = bytearray(_VOL_ARGS_SIZE)
    _V2_HEAD.pack_into(buf, 0, source_fd, 0, SUBVOL_RDONLY if readonly else 0)
    raw = _name_bytes(name)
    buf[_V2_HEAD.size:_V2_HEAD.size + len(raw)] = raw
    fcntl.ioctl(dest_dir_fd, IOC_SNAP_CREATE_V2, buf)


def destroy_subvolume(parent_fd: int, name: str) -> None:
    """Delete the subvolume ``name`` inside the directory ``parent_fd``.

    Uses ``BTRFS_IOC_SNAP_DESTROY_V2`` and falls back to the older
    ``BTRFS_IOC_SNAP_DESTROY`` on kernels before 5.7.  Root may delete a
    read-only snapshot directly; the kernel frees its extents in the
    background.
    """
    raw = _name_bytes(name)
    buf = bytearray(_VOL_ARGS_SIZE)
    _V2_HEAD.pack_into(buf, 0, 0, 0, 0)
    buf[_V2_HEAD.size:_V2_HEAD.size + len(raw)] = raw
    try:
        fcntl.ioctl(parent_fd, IOC_SNAP_DESTROY_V2, buf)
        return
    except OSError as err:
        if err.errno not in (errno.ENOTTY, errno.EINVAL):
            raise
    buf = bytearray(_VOL_ARGS_SIZE)
    buf[_V1_HEAD.size:_V1_HEAD.size + len(raw)] = raw
    fcntl.ioctl(parent_fd, IOC_SNAP_DESTROY, buf)


def get_readonly(fd: int) -> bool:
    buf = bytearray(8)
    fcntl.ioctl(fd, IOC_SUBVOL_GETFLAGS, buf)
    return bool(struct.unpack("=Q", buf)[0] & SUBVOL_RDONLY)


def set_readonly(fd: int, readonly: bool) -> None:
    buf = bytearray(8)
    fcntl.ioctl(fd, IOC_SUBVOL_GETFLAGS, buf)
    flags = struct.unpack("=Q", buf)[0]
    flags = flags | SUBVOL_RDONLY if readonly else flags & ~SUBVOL_RDONLY
    fcntl.ioctl(fd, IOC_SUBVOL_SETFLAGS, struct.pack("=Q", flags))


def rename_exchange(dir_fd: int, name_a: str, name_b: str) -> None:
    """Atomically swap two entries of one directory (``renameat2`` ``RENAME_EXCHANGE``)."""
    if _libc.renameat2(dir_fd, os.fsencode(name_a), dir_fd, os.fsencode(name_b),
                       _RENAME_EXCHANGE) != 0:
        _raise_errno(name_b)


def syncfs(fd: int) -> None:
    """Commit the filesystem holding ``fd`` (``syncfs(2)``)."""
    if _libc.syncfs(fd) != 0:
        _raise_errno()


def _tree_search(fd: int, tree_id: int, objectid: int, key_type: int,
                 min_offset: int = 0, max_offset: int = 2**64 - 1) -> list[tuple[int, bytes]]:
    """Items ``(offset, item bytes)`` with one objectid and type in one tree.

    The kernel walks keys in (objectid, type, offset) order between the
    minimum and maximum key, so each batch resumes just after the last key.
    """
    found: list[tuple[int, bytes]] = []
    while True:
        buf = bytearray(_SEARCH_ARGS_SIZE)
        _SEARCH_KEY.pack_into(buf, 0, tree_id, objectid, objectid, min_offset, max_offset,
                              0, 2**64 - 1, key_type, key_type, 4096, 0, 0, 0, 0, 0)
        fcntl.ioctl(fd, IOC_TREE_SEARCH, buf)
        nr_items = struct.unpack_from("=I", buf, 7 * 8 + 2 * 4)[0]
        if nr_items == 0:
            return found
        pos = _SEARCH_KEY.size
        last = None
        for _ in range(nr_items):
            _transid, item_objectid, offset, item_type, length = _SEARCH_HEADER.unpack_from(buf, pos)
            pos += _SEARCH_HEADER.size
            if item_objectid == objectid and item_type == key_type:
                found.append((offset, bytes(buf[pos:pos + length])))
            pos += length
            last = (item_objectid, item_type, offset)
        if last is None or last >= (objectid, key_type, max_offset):
            return found
        # resume after the last key; with objectid and type fixed, only the offset moves
        if last[:2] != (objectid, key_type):
            return found
        min_offset = last[2] + 1


def child_subvolumes(fd: int) -> list[int]:
    """Tree ids of the subvolumes nested directly in the subvolume open as ``fd``.

    ``BTRFS_IOC_GET_SUBVOL_ROOTREF`` (Linux 4.18), which needs no privilege.
    The kernel fills up to 255 entries a call, answers ``EOVERFLOW`` when
    more remain and moves ``min_treeid`` past the last one it returned.  The
    4 KiB buffer is larger than the 1 KiB :func:`fcntl.ioctl` copies, so the
    kernel writes into it in place even when the call fails.
    """
    found: list[int] = []
    buf = bytearray(4096)
    while True:
        try:
            fcntl.ioctl(fd, IOC_GET_SUBVOL_ROOTREF, buf)
            more = False
        except OSError as err:
            if err.errno != errno.EOVERFLOW:
                raise
            more = True
        count = buf[_ROOTREF_COUNT_AT]
        found += [struct.unpack_from("=Q", buf, 8 + index * 16)[0] for index in range(count)]
        if not more or count == 0:
            return found


def default_subvolume(fd: int) -> int:
    """The tree id of the default subvolume of the btrfs holding ``fd`` (needs root).

    Read as ``btrfs subvolume get-default`` does: the ``default`` entry of the
    root tree's directory; a filesystem without one mounts its top level (5).
    """
    for _offset, item in _tree_search(fd, _ROOT_TREE_OBJECTID, _ROOT_TREE_DIR_OBJECTID,
                                      _DIR_ITEM_KEY):
        pos = 0
        while pos + _DIR_ITEM.size <= len(item):  # one item holds every name with that hash
            location, _type, _offset2, _transid, data_len, name_len, _ftype = \
                _DIR_ITEM.unpack_from(item, pos)
            start = pos + _DIR_ITEM.size
            if item[start:start + name_len] == b"default":
                return location
            pos = start + name_len + data_len
    return _FS_TREE_OBJECTID


def qgroup_usage(fd: int, subvol_id: int) -> tuple[int, int] | None:
    """``(exclusive, referenced)`` bytes of subvolume ``subvol_id`` from its qgroup.

    ``None`` when quotas are off or their numbers are not consistent yet (a
    rescan is running).  Needs root; commit first for fresh numbers.
    """
    try:
        status = _tree_search(fd, _QUOTA_TREE_OBJECTID, 0, _QGROUP_STATUS_KEY)
    except OSError as err:
        if err.errno == errno.ENOENT:  # no quota tree: quotas are disabled
            return None
        raise
    if not status:
        return None
    # struct btrfs_qgroup_status_item: version, generation, flags, rescan.
    flags = struct.unpack_from("=QQQ", status[0][1], 0)[2]
    if flags & (_QGROUP_STATUS_INCONSISTENT | _QGROUP_STATUS_RESCAN):
        return None
    # level-0 qgroup id of a subvolume is the subvolume id itself
    items = _tree_search(fd, _QUOTA_TREE_OBJECTID, 0, _QGROUP_INFO_KEY, subvol_id, subvol_id)
    if not items:
        return None
    # struct btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr.
    _gen, referenced, _rc, exclusive, _ec = struct.unpack_from("=5Q", items[0][1], 0)
    return exclusive, referenced
