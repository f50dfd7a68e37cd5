"""Where the qcow2 backend keeps its files, and which image is active.

A volume is named by the image the user registered, ``/dir/disk.qcow2``.
External snapshots live in ``/dir/.disk.qcow2.snaptree/``:

``<snapshot_id>.qcow2``
    the overlay made when snapshot ``<snapshot_id>`` was taken; its backing
    image is the snapshot's (frozen) content.  Its name is how
    :func:`snaptree_list` finds the snapshot again.
``run-<hex>.qcow2``
    an overlay made by a revert: the new active layer on a snapshot's image.
``active``
    the path of the image the VM must run on now (absent: the registered
    image itself).  Written atomically; libvirt keeps the same fact in its
    domain XML.
``<snapshot_id>.base``
    while a live external create switches QEMU to overlay ``<snapshot_id>``:
    what the image below looked like right after the switch (:mod:`.bases`).
The folder and every image snaptree creates in it take the registered
image's owner and group and a mode the owner can use (the image's own bits,
plus read-write for the owner; the folder opens to the classes the image
does): a VM running as that user must open its overlays.

``<snapshot_id>.memory``
    VM memory saved with an external snapshot (in the first disk's folder).
``paused``
    the QMP socket of a VM snaptree paused and has not resumed yet (in the
    first disk's folder); if snaptree dies in between, ``recover`` resumes it.
``restart``
    written before snaptree shuts a VM down to revert it, removed once the
    VM runs again (in the first disk's folder): JSON with the QMP socket,
    the launch recipe and the group's qcow2 images, so ``recover`` can start
    a VM that an interrupted revert left down.
"""

from __future__ import annotations

import os
import re
import secrets
import stat

from snaptree.errors import BackendError, StateError
from snaptree.fileattrs import copy_xattrs
from snaptree.names import beside

__all__ = ["read_note", "remove_file", "snapshot_dir", "make_snapshot_dir", "adopt", "overlay_path", "run_overlay_path", "memory_path", "base_note", "active_image",
           "set_active", "pause_marker", "restart_marker", "SNAPSHOT_ID", "OVERLAY_FILE", "BASE_NOTE_FILE", "PARTIAL"]

SNAPSHOT_ID = re.compile(r"^[0-9a-f]{16}$")
OVERLAY_FILE = re.compile(r"^([0-9a-f]{16})\.qcow2$")
BASE_NOTE_FILE = re.compile(r"^([0-9a-f]{16})\.base$")
PARTIAL = ".partial"
_ACTIVE = "active"


def snapshot_dir(image: str) -> str:
    return beside(image, ".snaptree")


def remove_file(path: str, what: str = "remove") -> None:
    """Remove ``path``; one already gone is fine, any other failure is a
    :class:`BackendError` ("qcow2: cannot ``what`` ``path``: ...")."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise BackendError(f"qcow2: cannot {what} {path}: {err.strerror}") from err


def adopt(image: str, path: str) -> None:
    """Give ``path``, an image snaptree made in ``image``'s folder, ``image``'s
    owner and group, its extended attributes (the label a confined QEMU
    needs, ACLs) and a mode its owner can use (the image's bits plus owner
    read-write), so a VM running as that user opens it."""
    try:
        found = os.stat(image)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, found.st_uid, found.st_gid)
            copy_xattrs(image, fd)
            os.fchmod(fd, (stat.S_IMODE(found.st_mode) & 0o666) | 0o600)
        finally:
            os.close(fd)
    except OSError as err:
        raise BackendError(f"qcow2: cannot give {path} the owner and mode of {image}: "
                           f"{err.strerror}") from err


def make_snapshot_dir(image: str) -> str:
    """``image``'s folder, made if missing.

    It stays snaptree's own: only its owner (snaptree's user) may write in
    it, since snaptree creates and renames files there (as root, another
    user able to write there could point those names anywhere).  Users the
    image opens to may pass through it to the images it holds.
    """
    folder = snapshot_dir(image)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise BackendError(f"qcow2: cannot create {folder}: {err.strerror}") from err
    try:
        found, disk = os.lstat(folder), os.stat(image)
        if (not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid()
                or found.st_mode & 0o022):
            raise BackendError(
                f"qcow2: {folder} must be a folder that only uid {os.geteuid()} (snaptree) owns "
                "and can write to; another user could redirect what snaptree writes there")
        shared = disk.st_uid != os.geteuid() or disk.st_mode & 0o066
        wanted = 0o711 if shared else 0o700
        if stat.S_IMODE(found.st_mode) != wanted:
            os.chmod(folder, wanted)
    except OSError as err:
        raise BackendError(f"qcow2: cannot check {folder}: {err.strerror}") from err
    return folder


def overlay_path(image: str, snapshot_id: str) -> str:
    return os.path.join(snapshot_dir(image), f"{snapshot_id}.qcow2")


def run_overlay_path(image: str) -> str:
    return os.path.join(snapshot_dir(image), f"run-{secrets.token_hex(4)}.qcow2")


def memory_path(image: str, snapshot_id: str) -> str:
    return os.path.join(snapshot_dir(image), f"{snapshot_id}.memory")


def base_note(image: str, snapshot_id: str) -> str:
    return os.path.join(snapshot_dir(image), f"{snapshot_id}.base")


def pause_marker(image: str) -> str:
    return os.path.join(snapshot_dir(image), "paused")


def restart_marker(image: str) -> str:
    return os.path.join(snapshot_dir(image), "restart")


def read_note(path: str) -> str | None:
    """The one line of a small bookkeeping file (``active``, ``paused``), or
    ``None`` when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)  # cheaper than open() where it is usually missing
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BackendError(f"qcow2: cannot read {path}: {err.strerror}") from err
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as err:
        raise BackendError(f"qcow2: cannot read {path}: {err.strerror}") from err
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise BackendError(f"qcow2: {path} is not text") from err


def active_image(image: str) -> str:
    """The image the volume's VM runs on: the registered one or an overlay."""
    pointer = os.path.join(snapshot_dir(image), _ACTIVE)
    target = read_note(pointer)
    if target is None:
        return image
    # Only the image itself or a file of its own folder may be named here.
    if target != image and os.path.dirname(target) != snapshot_dir(image):
        raise StateError(f"qcow2: {pointer} names {target!r}, outside {snapshot_dir(image)}")
    return target


def set_active(image: str, target: str) -> None:
    """Record ``target`` as the active image of ``image``, atomically."""
    folder = snapshot_dir(image)
    pointer = os.path.join(folder, _ACTIVE)
    try:
        if target == image:
            try:
                os.unlink(pointer)
            except FileNotFoundError:
                pass
        else:
            make_snapshot_dir(image)
            with open(pointer + PARTIAL, "w", encoding="utf-8") as handle:
                handle.write(target + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(pointer + PARTIAL, pointer)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return  # folder gone and target is the image: nothing to record
    except OSError as err:
        raise BackendError(f"qcow2: cannot record the active image in {pointer}: "
                           f"{err.strerror}") from err
