"""VM run state and memory over QMP: the ``xl snapshot`` flow.

* pause / resume: ``stop`` and ``cont``; we resume only a VM we paused.
* internal snapshots keep memory inside the first disk: one ``snapshot-save``
  job writes the vmstate and the tag of every disk, and ``snapshot-load``
  brings disks and memory back together.
* external snapshots write memory to a file with ``migrate`` over a file
  descriptor passed with ``getfd`` (QEMU 7.2 has no ``file:`` URI).  That
  runs after the disks were snapshotted and before ``cont``: migration
  inactivates the block nodes, which would make the disk snapshot fail, and
  the guest is paused throughout, so disks and memory still match.
  Restoring a memory file needs a QEMU started with ``-incoming defer``
  (:mod:`.launch`); :func:`load_file` feeds it the file over a passed
  descriptor with ``migrate-incoming``.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

from snaptree.errors import BackendError

from .layout import read_note
from .qmp import QMPSession, reachable

__all__ = ["NEEDS_RESET", "pause", "resume", "save_internal", "load_internal", "migrate_to_file", "load_file", "discard",
           "mark_paused", "clear_paused", "resume_abandoned"]

_FD_NAME = "snaptree-memory"
#: bytes per second; QEMU takes any value up to INT64_MAX, this is "no limit" in practice
_UNTHROTTLED = 1 << 50


def pause(session: QMPSession, before_stop: Callable[[], None] | None = None) -> bool:
    """Stop the guest; return whether it was running (and so must be resumed).

    ``before_stop`` runs just before ``stop`` is sent, only for a running
    guest: it records that snaptree owes the VM a ``cont``.
    """
    status = session.execute("query-status")
    if status.get("running"):
        if before_stop is not None:
            before_stop()
        session.execute("stop")
        return True
    return False


#: run states QEMU leaves only through a reset (``cont`` refuses them)
NEEDS_RESET = ("internal-error", "shutdown", "guest-panicked")


def resume(session: QMPSession) -> str | None:
    """Run the guest unless it runs already.

    Returns ``None``, or the run state that keeps it from running: a guest
    saved after it crashed comes back crashed, and only a reset helps.
    """
    status = session.execute("query-status")
    if status.get("running"):
        return None
    if status.get("status") in NEEDS_RESET:
        return status["status"]
    session.execute("cont")
    return None


def mark_paused(marker: str, socket_path: str) -> None:
    """Record that snaptree is about to pause the VM at ``socket_path``."""
    try:
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        with open(marker + ".partial", "w", encoding="utf-8") as handle:
            handle.write(socket_path + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(marker + ".partial", marker)
    except OSError as err:
        raise BackendError(f"qcow2: cannot record the VM pause in {marker}: {err.strerror}") from err


def clear_paused(marker: str) -> None:
    _unlink(marker)


#: run states a snaptree crash can leave a VM in, and that ``cont`` leaves
_RESUMABLE = ("paused", "postmigrate")


def resume_abandoned(marker: str) -> str | None:
    """Resume a VM that a dead snaptree process paused; return what was done.

    The marker names the VM's QMP socket.  A VM no longer reachable, or in a
    state snaptree does not leave it in, is not touched; the marker goes.
    """
    socket_path = read_note(marker)
    if socket_path is None:
        return None
    done = None
    if reachable(socket_path):
        with QMPSession(socket_path) as session:
            status = session.execute("query-status").get("status")
            if status in _RESUMABLE:
                session.execute("cont")
                done = f"resumed the VM at {socket_path}, paused by an interrupted snaptree"
    clear_paused(marker)
    return done


def save_internal(session: QMPSession, tag: str, nodes: Sequence[str],
                  progress: Callable[..., None]) -> None:
    """Write the vmstate into ``nodes[0]`` and tag every node with ``tag``."""
    job_id = f"snaptree-save-{tag}"
    session.run_job("snapshot-save", {"job-id": job_id, "tag": tag, "vmstate": nodes[0],
                                      "devices": list(nodes)},
                    job_id, progress=progress, label="save memory")


def load_internal(session: QMPSession, tag: str, nodes: Sequence[str],
                  progress: Callable[..., None]) -> str | None:
    """Load disks and memory of internal snapshot ``tag``, then run the guest.

    Returns what :func:`resume` returns.
    """
    job_id = f"snaptree-load-{tag}"
    session.run_job("snapshot-load", {"job-id": job_id, "tag": tag, "vmstate": nodes[0],
                                      "devices": list(nodes)},
                    job_id, progress=progress, label="load memory")
    return resume(session)


def migrate_to_file(session: QMPSession, path: str, progress: Callable[..., None],
                    timeout: float = 3600.0) -> int:
    """Stream the paused guest's memory into ``path``; return its size in bytes."""
    partial = path + ".partial"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as err:
        raise BackendError(f"qcow2: cannot create memory file {partial}: {err.strerror}") from err
    try:
        session.send_fd(fd, _FD_NAME)
    finally:
        os.close(fd)  # QEMU holds its own copy now
    # QEMU throttles migration to 128 MiB/s by default, meant for a network
    # link; the guest is paused and the target is a local file, so lift the
    # limit for this save and put the user's value back afterwards
    limit = session.execute("query-migrate-parameters").get("max-bandwidth")
    if limit is not None:
        session.execute("migrate-set-parameters", {"max-bandwidth": _UNTHROTTLED})
    try:
        _stream_out(session, partial, progress, timeout)
    except BaseException:
        if limit is not None:
            try:
                session.execute("migrate-set-parameters", {"max-bandwidth": limit})
            except BackendError:
                pass  # QEMU gone: the save's own error is the one to report
        raise
    if limit is not None:
        session.execute("migrate-set-parameters", {"max-bandwidth": limit})
    try:
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
        return os.stat(path).st_size
    except OSError as err:
        raise BackendError(f"qcow2: cannot finish memory file {path}: {err.strerror}") from err


def _stream_out(session: QMPSession, partial: str, progress: Callable[..., None],
                timeout: float) -> None:
    session.execute("migrate", {"uri": f"fd:{_FD_NAME}"})
    deadline = time.monotonic() + timeout
    while True:
        info = session.execute("query-migrate")
        status = info.get("status")
        ram = info.get("ram") or {}
        if ram.get("total"):
            progress(ram.get("transferred", 0), ram["total"], "save memory")
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            _unlink(partial)
            raise BackendError(f"qcow2: saving memory failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            session.execute("migrate_cancel")
            _unlink(partial)
            raise BackendError("qcow2: saving memory timed out")
        time.sleep(0.02)


def load_file(session: QMPSession, path: str, progress: Callable[..., None],
              timeout: float = 3600.0) -> None:
    """Load the memory file ``path`` into a QEMU waiting with ``-incoming defer``.

    The guest stays paused afterwards (QEMU was started with ``-S``).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise BackendError(f"qcow2: cannot open memory file {path}: {err.strerror}") from err
    try:
        total = os.fstat(fd).st_size
        session.send_fd(fd, _FD_NAME)
    finally:
        os.close(fd)
    session.execute("migrate-incoming", {"uri": f"fd:{_FD_NAME}"})
    deadline = time.monotonic() + timeout
    while True:
        info = session.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            progress(total, total, "load memory")
            return
        if status in ("failed", "cancelled"):
            raise BackendError(f"qcow2: loading memory from {path} failed: "
                               f"{info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise BackendError(f"qcow2: loading memory from {path} timed out")
        progress(0, total, "load memory")
        time.sleep(0.02)


def discard(path: str) -> None:
    """Remove a memory file that served its purpose (gone already is fine)."""
    _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
