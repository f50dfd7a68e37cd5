"""What a qcow2 file's header says: size, backing file and internal snapshots.

``qemu-img info`` costs a process (milliseconds); this reads the header, the
backing file name and the snapshot table with a few ``pread`` calls (tens
of microseconds).  The live path checks with it that a snapshot landed in
the image it meant (see :meth:`.live.LiveOps.snapshot`), and
:class:`.offline.Chain` reads every image of a volume with it.  The layout
is QEMU's ``docs/interop/qcow2.txt``: big-endian; the backing file name at
``backing_file_offset``; the table at ``snapshots_offset`` holding
``nb_snapshots`` entries, each padded to 8 bytes, whose extra data starts
with the 64-bit size of the saved VM state.
"""

from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple

__all__ = ["snapshot_names", "read_header", "Header", "holds_no_data"]

_MAGIC = b"QFI\xfb"
_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset: 72 bytes
_ENTRY = struct.Struct(">QIHHIIQII")         # fixed part of a table entry: 40 bytes
_LARGE_VM_STATE = struct.Struct(">Q")        # first field of an entry's extra data
_CHUNK = 4096  # a table of a few dozen snapshots
_MAX_BACKING_NAME = 1023                     # QEMU refuses longer backing file names
_MAX_SNAPSHOTS = 65536                       # QEMU's limits on the table (QCOW_MAX_SNAPSHOTS*)
_MAX_TABLE_BYTES = 64 * 1024 * 1024
_MAX_L1_ENTRIES = 32 * 1024 * 1024 // 8     # QEMU's QCOW_MAX_L1_SIZE (32 MiB)


class Header(NamedTuple):
    """What :func:`read_header` found."""

    #: the backing file name as written in the image (may be relative to it)
    backing: str | None
    #: the internal snapshots in table order: ``{"name": ..., "vm-state-size": bytes}``
    snapshots: list[dict[str, Any]]
    #: the virtual disk's size in bytes
    size: int


def snapshot_names(path: str) -> list[str] | None:
    """Names of the internal snapshots in the qcow2 image ``path``.

    Returns ``None`` when the file cannot be read or does not look like
    qcow2 (the caller then asks a slower, surer source).
    """
    header = read_header(path)
    return None if header is None else [s["name"] for s in header.snapshots]


def holds_no_data(path: str) -> bool:
    """True when the qcow2 image ``path`` maps no cluster of its own (its L1
    table is all zeros): everything it shows comes from its backing image.

    What a QEMU that has the image open wrote may not be in the file yet:
    ask only about an image nobody holds.  False when it cannot tell.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fields = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        if fields[0] != _MAGIC or fields[1] not in (2, 3) or fields[11]:
            return False  # not qcow2, or it holds internal snapshots
        l1_entries, l1_offset = fields[7], fields[8]
        if l1_entries > _MAX_L1_ENTRIES:
            return False
        table = os.pread(fd, 8 * l1_entries, l1_offset)
        return len(table) == 8 * l1_entries and not any(table)
    except (OSError, struct.error):
        return False
    finally:
        os.close(fd)


def read_header(path: str) -> Header | None:
    """The size, backing file and internal snapshots of the qcow2 image ``path``;
    ``None`` when it cannot be read or is not qcow2 (ask ``qemu-img info``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read(fd)
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> Header | None:
    head = os.pread(fd, _HEADER.size, 0)
    fields = _HEADER.unpack(head)
    magic, version = fields[0], fields[1]
    backing_offset, backing_size, size = fields[2], fields[3], fields[5]
    count, table = fields[11], fields[12]
    if magic != _MAGIC or version not in (2, 3):
        return None
    backing = None
    if backing_offset:
        if backing_size > _MAX_BACKING_NAME:
            raise ValueError("backing file name too long")
        raw = os.pread(fd, backing_size, backing_offset)
        if len(raw) != backing_size:
            raise ValueError("backing file name past the end of the file")
        backing = raw.decode("utf-8")
    return Header(backing, _read_snapshots(fd, count, table) if count else [], size)


def _read_snapshots(fd: int, count: int, table: int) -> list[dict[str, Any]]:
    if count > _MAX_SNAPSHOTS:
        raise ValueError("more snapshots than QEMU allows: a damaged header")
    buffer = bytearray(os.pread(fd, _CHUNK, table))

    def have(end: int) -> None:
        """Read on until ``buffer`` holds the table's first ``end`` bytes."""
        while end > len(buffer):
            if end > _MAX_TABLE_BYTES:
                raise ValueError("snapshot table larger than QEMU allows: a damaged header")
            # doubling: a big table takes a few reads, not one per 4 KiB
            more = os.pread(fd, max(_CHUNK, end - len(buffer), len(buffer)), table + len(buffer))
            if not more:
                raise ValueError("snapshot table past the end of the file")
            buffer.extend(more)

    snapshots: list[dict[str, Any]] = []
    offset = 0
    for _ in range(count):
        have(offset + _ENTRY.size)
        (_, _, id_size, name_size, _, _, _, vm_state, extra_size) = _ENTRY.unpack_from(buffer, offset)
        size = _ENTRY.size + extra_size + id_size + name_size
        have(offset + size)  # the last entry's padding may be missing
        if extra_size >= _LARGE_VM_STATE.size:
            (vm_state,) = _LARGE_VM_STATE.unpack_from(buffer, offset + _ENTRY.size)
        start = offset + _ENTRY.size + extra_size + id_size
        snapshots.append({"name": buffer[start:start + name_size].decode("utf-8"),
                          "vm-state-size": vm_state})
        offset += size + -size % 8
    return snapshots
