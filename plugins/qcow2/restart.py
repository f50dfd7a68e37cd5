"""Restarting a VM across a revert, safely across a crash of snaptree.

Before snaptree shuts a group's QEMU down it writes the ``restart`` marker
(:func:`.layout.restart_marker`, in the first disk's folder); the marker goes
once the VM runs again.  If snaptree dies in between, ``recover`` finds the
marker: a VM still down is started again from the group's launch recipe on
the current active images, and a VM left paused is resumed.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from snaptree.errors import BackendError, SnaptreeError
from snaptree.runner import CommandRunner

from .launch import Recipe
from . import memory
from .layout import PARTIAL, make_snapshot_dir, restart_marker, snapshot_dir
from .qmp import QMPSession, reachable

__all__ = ["mark_restart", "read_restart", "clear_restart", "finish_abandoned_restart",
           "saved_state_path"]


def saved_state_path(first_image: str) -> str:
    """Where the guest's state waits while QEMU is down for a delete."""
    return os.path.join(snapshot_dir(first_image), "restart.memory")


def mark_restart(images: Sequence[str], qmp_socket: str, recipe: str | None,
                 running: bool, memory_file: str | None = None) -> None:
    """Record that the VM at ``qmp_socket`` (disks ``images``) is about to be shut down.

    :param running: whether its guest ran, so it runs again once restarted.
    :param memory_file: where its state is being saved, to be loaded by the
        next QEMU (a restart the guest must not notice).
    """
    marker = restart_marker(images[0])
    note = {"socket": qmp_socket, "recipe": recipe, "images": list(images), "running": running,
            "memory": memory_file}
    try:
        make_snapshot_dir(images[0])
        with open(marker + PARTIAL, "w", encoding="utf-8") as handle:
            json.dump(note, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(marker + PARTIAL, marker)
    except OSError as err:
        raise BackendError(f"qcow2: cannot record the VM restart in {marker}: {err.strerror}") from err


def read_restart(first_image: str) -> dict | None:
    """The restart note left in ``first_image``'s folder, or ``None``."""
    try:
        with open(restart_marker(first_image), encoding="utf-8") as handle:
            note = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def clear_restart(first_image: str) -> None:
    try:
        os.unlink(restart_marker(first_image))
    except FileNotFoundError:
        pass


#: run states an interrupted restart can leave a VM in, and that ``cont`` leaves
_RESUMABLE = ("prelaunch", "paused", "postmigrate")


def finish_abandoned_restart(first_image: str, runner: CommandRunner) -> str | None:
    """Bring back a VM that an interrupted revert shut down; say what was done."""
    marker = restart_marker(first_image)
    note = read_restart(first_image)
    if note is None:
        return None
    try:
        socket_path, recipe_path, images = note["socket"], note.get("recipe"), note["images"]
    except KeyError as err:
        clear_restart(first_image)
        return f"dropped an unreadable restart note {marker} (no {err})"
    done = None
    if not reachable(socket_path):
        if recipe_path is None:
            clear_restart(first_image)
            return (f"the VM at {socket_path} was shut down by an interrupted revert and no "
                    "launch recipe is known: start it again")
        saved = note.get("memory")
        if saved and not os.path.exists(saved):
            saved = None  # QEMU never finished saving: the guest boots afresh
        try:
            Recipe.load(recipe_path, images, socket_path).start(runner, socket_path,
                                                                incoming=saved is not None)
            if saved is not None:
                with QMPSession(socket_path) as session:
                    memory.load_file(session, saved, lambda *a: None)
        except SnaptreeError as err:
            raise BackendError(f"qcow2: cannot start the VM an interrupted operation shut down: "
                               f"{err.one_line()}") from err
        done = (f"started the VM at {socket_path} again, shut down by an interrupted operation"
                + (" (its memory loaded back)" if saved else ""))
    with QMPSession(socket_path) as session:
        status = session.execute("query-status").get("status")
        if status in _RESUMABLE and note.get("running", True):
            session.execute("cont")
            done = done or f"resumed the VM at {socket_path}, left paused by an interrupted revert"
    clear_restart(first_image)
    if note.get("memory"):
        try:
            os.unlink(note["memory"])
        except FileNotFoundError:
            pass
    return done
