"""Reverting LVs without losing the snapshot reverted to, and finishing it after a crash.

Thin volumes (swap)
    ``lvconvert --merge`` of a thin snapshot replaces the origin *by the
    snapshot*, consuming it.  To keep it, snaptree takes a fresh thin snapshot
    of the target (``<lv>.snaptree-new.<id>``), parks the origin as
    ``<lv>.snaptree-old.<id>``, renames the new LV to ``<lv>`` and removes
    the old one.  Every state in between is recognised by name, so
    :func:`finish_thin` rolls it forward (the new LV exists but the origin
    name is free) or back (the origin is still in place).  The origin must
    not be open: a thin revert is refused with VolumeInUse otherwise.

Thick volumes (merge, then re-create)
    ``lvconvert --merge`` copies the snapshot's exceptions back into the
    origin; the other snapshots of the origin stay valid, but the merged one
    is gone.  When the merge ran under our eyes (the origin was not open),
    the origin holds exactly the snapshot's content afterwards, so snaptree
    re-creates the snapshot with the same name and size before anybody else
    can write.  A tag on the origin, ``snaptree-remake.<id>.<bytes>``, marks
    the window so a crash inside it is finished by :func:`finish_thick`.

    When the origin is open, LVM defers the merge to the origin's next
    activation.  snaptree tags the origin ``snaptree-deferred.<id>.<bytes>``
    and says so.  ``snaptree recover``, once the origin is closed,
    deactivates and re-activates it, waits for the merge and re-creates the
    snapshot.  If something else activated the origin first (a reboot), the
    merge has happened and the origin may since have changed: the snapshot
    is then reported as consumed, never re-created from later data.
"""

from __future__ import annotations

import logging
import re
import time

from snaptree.errors import BackendError, VolumeInUse, VolumeNotFound

from .lvmcmd import LvInfo, LvmCommands
from .names import match_snapshot_lv, revert_old_name, revert_temp_name, snapshot_lv_name

__all__ = ["revert_thin", "revert_thick", "finish_thin", "finish_thick", "SNAPSHOT_TAG",
           "pending_tags"]

log = logging.getLogger("snaptree.lvm")

#: Tag on every snapshot LV snaptree makes.
SNAPSHOT_TAG = "snaptree"
_PENDING = re.compile(r"^snaptree-(remake|deferred)\.([0-9a-f]{16})\.([0-9]+)$")
#: Seconds to wait for a merge LVM runs in the background.
MERGE_TIMEOUT = 600.0
_DEFERRED_WORDS = ("Delaying merge", "will occur on next activation")


def pending_tags(tags) -> list[tuple[str, str, str, int]]:
    """``(tag, kind, snapshot_id, size_bytes)`` for the revert markers among ``tags``."""
    out = []
    for tag in tags:
        match = _PENDING.match(tag)
        if match:
            out.append((tag, match[1], match[2], int(match[3])))
    return out


# -- thin ------------------------------------------------------------------------


def revert_thin(cmds: LvmCommands, vg: str, lv: str, snapshot_id: str) -> None:
    """Make thin LV ``vg/lv`` a copy of its snapshot ``snapshot_id``, keeping the snapshot."""
    finish_thin(cmds, vg, lv)
    origin = cmds.lv(vg, lv)
    if origin is None:
        raise VolumeNotFound(f"lvm: {vg}/{lv} does not exist")
    if origin.is_open:
        raise VolumeInUse(f"lvm: {vg}/{lv} is open; close it (stop the VM, unmount) to revert")
    source = snapshot_lv_name(lv, snapshot_id)
    new, old = revert_temp_name(lv, snapshot_id), revert_old_name(lv, snapshot_id)
    cmds.create_thin_snapshot(vg, source, new, skip_activation=False)
    try:
        if origin.is_active:
            cmds.deactivate(vg, lv)  # fails while a user holds it open: nothing changed yet
    except BaseException:
        cmds.remove(vg, new)
        raise
    cmds.rename(vg, lv, old)
    cmds.rename(vg, new, lv)
    if origin.is_active:
        cmds.activate(vg, lv)
    cmds.remove(vg, old)


def finish_thin(cmds: LvmCommands, vg: str, lv: str,
                existing: dict[str, LvInfo] | None = None) -> list[str]:
    """Roll an interrupted thin swap of ``vg/lv`` forward or back; returns what was done.

    :param existing: ``cmds.lv_map(vg)`` if the caller has it (saves an ``lvs``).
    """
    lines: list[str] = []
    names = existing if existing is not None else cmds.lv_map(vg)
    news = [n for n in names if match_snapshot_lv(lv, n, "snaptree-new")]
    olds = [n for n in names if match_snapshot_lv(lv, n, "snaptree-old")]
    if not news and not olds:
        return lines
    if lv not in names:
        if news:
            cmds.rename(vg, news[0], lv)
            lines.append(f"finished an interrupted revert: {news[0]} is now {lv}")
            news = news[1:]
        elif olds:
            cmds.rename(vg, olds[0], lv)
            lines.append(f"rolled back an interrupted revert: {olds[0]} is {lv} again")
            olds = olds[1:]
        cmds.activate(vg, lv, ignore_skip=False)
    for name in news + olds:
        cmds.remove(vg, name)
        lines.append(f"removed leftover {vg}/{name}")
    current = cmds.lv(vg, lv)
    if current is not None and not current.is_active and not current.skips_activation:
        cmds.activate(vg, lv, ignore_skip=False)
    elif current is not None and current.is_active:
        # renamed while active: udev (or libdevmapper) moves the node, and
        # one a crash lost is made again; a caller opening the volume right
        # after recover must find it
        cmds.wait_node(vg, lv)
    return lines


# -- thick -----------------------------------------------------------------------


def revert_thick(cmds: LvmCommands, vg: str, lv: str, snapshot_id: str) -> str | None:
    """Merge the thick snapshot ``snapshot_id`` into ``vg/lv`` and re-create it.

    :returns: a warning when the merge had to be deferred, else ``None``.
    """
    name = snapshot_lv_name(lv, snapshot_id)
    existing = cmds.lv_map(vg)
    snap, origin = existing.get(name), existing.get(lv)
    if origin is None:
        raise VolumeNotFound(f"lvm: {vg}/{lv} does not exist")
    if snap is not None and snap.is_merging:
        # a revert redone after a crash, or a deferred merge still waiting
        lines = finish_thick(cmds, vg, lv)
        return "; ".join(lines) if any("pending" in line for line in lines) else None
    if snap is None:
        # the merge finished before a crash; finish_thick re-creates the snapshot
        finish_thick(cmds, vg, lv)
        if cmds.lv(vg, name) is None:
            raise VolumeNotFound(f"lvm: snapshot {vg}/{name} does not exist; cannot revert")
        return None
    if snap.is_invalid:
        raise BackendError(f"lvm: snapshot {vg}/{name} overflowed and is invalid; cannot revert")
    size = snap.size_bytes or 0
    kind = "deferred" if origin.is_open else "remake"
    tag = f"snaptree-{kind}.{snapshot_id}.{size}"
    cmds.add_tag(vg, lv, tag)
    output = cmds.merge(vg, name)
    if any(words in output for words in _DEFERRED_WORDS):
        if kind == "remake":  # opened between our check and the merge
            cmds.add_tag(vg, lv, f"snaptree-deferred.{snapshot_id}.{size}")
            cmds.del_tag(vg, lv, tag)
        warning = (f"lvm: {vg}/{lv} is open, so LVM deferred the merge of {name} to the volume's "
                   f"next activation; the content changes then. Close the volume and run "
                   f"'snaptree recover' to finish the revert and keep the snapshot")
        log.warning(warning)
        return warning
    _wait_merged(cmds, vg, lv, name)
    cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
    cmds.del_tag(vg, lv, tag)
    return None


def _wait_merged(cmds: LvmCommands, vg: str, lv: str, name: str,
                 timeout: float = MERGE_TIMEOUT) -> None:
    """Wait until LVM has dropped the merged snapshot from its metadata."""
    deadline = time.monotonic() + timeout
    polled = False
    while True:
        snap = cmds.lv(vg, name)
        if snap is None:
            return
        if not snap.is_merging:
            raise BackendError(f"lvm: {vg}/{name} is not merging into {lv}; nothing to wait for")
        if time.monotonic() > deadline:
            raise BackendError(f"lvm: merge of {vg}/{name} did not finish within "
                               f"{timeout:.0f}s; run 'snaptree recover' later")
        if not polled:
            cmds.poll(vg, lv)  # make sure some process finishes the merge's metadata
            polled = True
        time.sleep(1)


def finish_thick(cmds: LvmCommands, vg: str, lv: str,
                 existing: dict[str, LvInfo] | None = None) -> list[str]:
    """Finish merges snaptree started on ``vg/lv`` and re-create their snapshots.

    :param existing: ``cmds.lv_map(vg)`` if the caller has it (saves an ``lvs``).
    """
    lines: list[str] = []
    existing = existing if existing is not None else cmds.lv_map(vg)
    origin = existing.get(lv)
    if origin is None or not pending_tags(origin.tags):
        return lines
    for tag, kind, snapshot_id, size in pending_tags(origin.tags):
        name = snapshot_lv_name(lv, snapshot_id)
        snap = existing.get(name)
        watched = kind == "remake"
        if snap is not None and snap.is_merging:
            if cmds.lv(vg, lv).is_open:
                lines.append(f"merge of {name} still pending: {vg}/{lv} is open")
                continue
            # re-activation starts the deferred merge; nobody else holds the origin now
            cmds.deactivate(vg, lv)
            cmds.activate(vg, lv)
            _wait_merged(cmds, vg, lv, name)
            watched = True
            lines.append(f"finished the deferred merge of {name} into {lv}")
        elif snap is not None:
            # the merge never started (crash before lvconvert): nothing to re-create
            cmds.del_tag(vg, lv, tag)
            continue
        if watched:
            cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
            lines.append(f"re-created snapshot {name} after the merge")
        else:
            lines.append(f"snapshot {name} was consumed by a merge that ran when {vg}/{lv} "
                         "was activated elsewhere; it no longer exists")
        cmds.del_tag(vg, lv, tag)
    return lines
