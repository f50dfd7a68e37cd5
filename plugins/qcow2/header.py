"""Internal snapshot names read straight from a qcow2 file's header.

``qemu-img info`` costs a process (milliseconds); this reads the header and
the snapshot table with a few ``pread`` calls (tens of microseconds), so the
live path can check on disk that a snapshot landed in the image it meant
(see :meth:`.live.LiveOps.snapshot`).  The layout is QEMU's
``docs/interop/qcow2.txt``: big-endian, the table at ``snapshots_offset``
holding ``nb_snapshots`` entries, each padded to 8 bytes.
"""

from __future__ import annotations

import os
import struct

__all__ = ["snapshot_names"]

_MAGIC = b"QFI\xfb"
_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset: 72 bytes
_ENTRY = struct.Struct(">QIHHIIQII")         # fixed part of a table entry: 40 bytes
_CHUNK = 4096  # a table of a few dozen snapshots


def snapshot_names(path: str) -> list[str] | None:
    """Names of the internal snapshots in the qcow2 image ``path``.

    Returns ``None`` when the file cannot be read or does not look like
    qcow2 (the caller then asks a slower, surer source).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_names(fd)
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return None
    finally:
        os.close(fd)


def _read_names(fd: int) -> list[str] | None:
    head = os.pread(fd, _HEADER.size, 0)
    fields = _HEADER.unpack(head)
    magic, version, count, table = fields[0], fields[1], fields[11], fields[12]
    if magic != _MAGIC or version not in (2, 3):
        return None
    if count == 0:
        return []
    buffer = os.pread(fd, _CHUNK, table)
    names: list[str] = []
    offset = 0
    for _ in range(count):
        if offset + _ENTRY.size > len(buffer):
            buffer += os.pread(fd, max(_CHUNK, _ENTRY.size), table + len(buffer))
        (_, _, id_size, name_size, _, _, _, _, extra_size) = _ENTRY.unpack_from(buffer, offset)
        size = _ENTRY.size + extra_size + id_size + name_size
        while offset + size > len(buffer):  # the last entry's padding may be missing
            more = os.pread(fd, max(_CHUNK, size), table + len(buffer))
            if not more:
                raise ValueError("snapshot table past the end of the file")
            buffer += more
        start = offset + _ENTRY.size + extra_size + id_size
        names.append(buffer[start:start + name_size].decode("utf-8"))
        offset += size + -size % 8
    return names
