"""What a live external create records about the images below its overlays.

Once QEMU has switched a disk to its new overlay, the image below (the
*base*) is open read-only in QEMU and no process can write it while QEMU
runs.  The create then writes each base's stamp to ``<id>.base`` in the
volume's folder (:func:`.layout.base_note`), before it writes ``active``,
and removes the note once ``active`` names the overlay.

A create killed in between leaves ``active`` naming the base while the
guest's writes after the switch sit in the overlay.  With QEMU gone, the
VM may have been started again on the base (as ``active`` says) and written
there; merging the overlay down would then put older data over newer.
``recover`` asks :func:`changed_since_switch`: a base whose stamp is still
the one recorded was not written since (the overlay may go into it), any
other difference, or no note at all, means it cannot be merged safely.

The stamp is the file's inode, size and modification time, compared for
equality: unlike comparing the base's time with the overlay's, it does not
care which clock was ahead.  The change time is left out: a toolstack
that changes the image's owner or security label on VM start or stop
changes it without writing.  The note is not synced: one a power cut
erased reads as "no record", which refuses the merge too.
"""

from __future__ import annotations

import json
import os

from snaptree.errors import BackendError

from .layout import base_note, remove_file

__all__ = ["record", "forget", "changed_since_switch"]


def _stamp(path: str) -> dict[str, int]:
    found = os.stat(path)
    return {"inode": found.st_ino, "size": found.st_size, "mtime_ns": found.st_mtime_ns}


def record(image: str, snapshot_id: str, base: str) -> None:
    """Note ``base``'s stamp for snapshot ``snapshot_id`` of volume ``image``
    (call only while QEMU holds ``base`` read-only below the new overlay)."""
    path = base_note(image, snapshot_id)
    try:
        text = json.dumps({"base": os.path.realpath(base), **_stamp(base)})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, text.encode("utf-8") + b"\n")
        finally:
            os.close(fd)
    except OSError as err:
        raise BackendError(f"qcow2: cannot record the state of {base} in {path}: "
                           f"{err.strerror}") from err


def forget(image: str, snapshot_id: str) -> None:
    """Remove the note of snapshot ``snapshot_id`` of volume ``image``, if any."""
    remove_file(base_note(image, snapshot_id), "remove the note")


def changed_since_switch(image: str, snapshot_id: str, base: str) -> str | None:
    """``None`` when ``base`` is as QEMU left it at the switch to snapshot
    ``snapshot_id``'s overlay; else why that cannot be said, as a clause."""
    path = base_note(image, snapshot_id)
    try:
        with open(path, encoding="utf-8") as handle:
            noted = json.load(handle)
        if not isinstance(noted, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        return (f"snaptree has no record of {base} at the switch (it was stopped before "
                "writing one), so it cannot tell whether that image was written since")
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{path}, which should tell what {base} was like at the switch, cannot be read"
    try:
        now = _stamp(base)
    except OSError as err:
        return f"{base} cannot be read ({err.strerror})"
    if noted.get("base") != os.path.realpath(base) or {k: noted.get(k) for k in now} != now:
        return f"{base} was written after the switch"
    return None
