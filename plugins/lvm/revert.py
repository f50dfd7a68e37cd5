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

    LVM merges only into an active origin; an inactive one would take the
    merge at its next activation, out of snaptree's sight.  So an inactive
    origin is activated for the merge and deactivated again afterwards.

    When the origin is open, LVM defers the merge to the origin's next
    activation.  snaptree tags the origin ``snaptree-deferred.<id>.<bytes>``
    and says so.  ``snaptree recover``, once the origin is closed,
    deactivates and re-activates it, waits for the merge and re-creates the
    snapshot.  If something else activated the origin first (a reboot), the
    merge has happened and the origin may since have changed: the snapshot
    is then reported as consumed, never re-created from later data.  If the
    snapshot overflowed while it waited, LVM can never merge it: the revert
    failed, and recover removes the invalid snapshot once the origin is
    closed (:func:`drop_failed_merge` does the same for a delete).
"""

from __future__ import annotations

import logging
import re
import time

from snaptree.errors import BackendError, NotSupported, VolumeInUse, VolumeNotFound

from .lvmcmd import LvInfo, LvmCommands
from .names import match_snapshot_lv, revert_old_name, revert_temp_name, snapshot_lv_name

__all__ = ["revert_thin", "revert_thick", "finish_thin", "finish_thick", "SNAPSHOT_TAG",
           "pending_tags", "restore_inactive", "drop_failed_merge"]

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
    # the new LV takes the volume's place: it gets the volume's own tags and activation
    # settings, before the swap, so that a crash leaves either LV complete
    autoactivation = cmds.autoactivation(vg, lv)
    cmds.create_thin_snapshot(vg, source, new, skip_activation=origin.skips_activation,
                              tags=[t for t in origin.tags if not _PENDING.match(t)])
    try:
        if autoactivation is False:
            cmds.set_autoactivation(vg, new, False)
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

    An inactive origin is activated for the merge and deactivated again:
    LVM would otherwise postpone the merge to whoever activates it next,
    out of snaptree's sight, and the snapshot would be consumed.

    :returns: a warning when the merge had to be deferred, else ``None``.
    """
    name = snapshot_lv_name(lv, snapshot_id)
    existing = cmds.lv_map(vg)
    snap, origin = existing.get(name), existing.get(lv)
    if origin is None:
        raise VolumeNotFound(f"lvm: {vg}/{lv} does not exist")
    if snap is not None and snap.is_merging:
        # a revert redone after a crash, or a deferred merge still waiting
        failed: list[str] = []
        lines = finish_thick(cmds, vg, lv, existing, failed)
        if failed:
            raise NotSupported(f"lvm: {vg}/{lv}: {failed[0]}")
        return "; ".join(lines) if any("pending" in line for line in lines) else None
    if snap is None:
        # the merge finished before a crash; finish_thick re-creates the snapshot
        finish_thick(cmds, vg, lv, existing)
        if cmds.lv(vg, name) is None:
            raise VolumeNotFound(f"lvm: snapshot {vg}/{name} does not exist; cannot revert")
        return None
    was_inactive = not origin.is_active
    if was_inactive:
        cmds.activate(vg, lv)  # with -K: an origin that skips activation is merged now too
        existing = cmds.lv_map(vg)  # only an active snapshot shows whether it overflowed
        snap, origin = existing.get(name, snap), existing.get(lv, origin)
    try:
        warning = _merge_and_remake(cmds, vg, lv, snapshot_id, snap, origin)
    except BaseException:
        if was_inactive:
            restore_inactive(cmds, vg, lv, quiet=True)
        raise
    if was_inactive:
        restore_inactive(cmds, vg, lv)
    return warning


def restore_inactive(cmds: LvmCommands, vg: str, lv: str, *, quiet: bool = False) -> bool:
    """Deactivate ``vg/lv`` again after snaptree activated it for a merge.

    Left active when somebody opened it meanwhile or a merge still runs.
    With ``quiet`` (another error is on its way up) a failure is logged
    instead of raised.  Returns whether it was deactivated.
    """
    try:
        now = cmds.lv(vg, lv)
        if now is None or not now.is_active or now.is_open or now.is_merging:
            return False
        cmds.deactivate(vg, lv)
        return True
    except BackendError as err:
        if not quiet:
            raise
        log.warning("lvm: could not deactivate %s/%s again: %s", vg, lv, err)
        return False


def _merge_and_remake(cmds: LvmCommands, vg: str, lv: str, snapshot_id: str, snap: LvInfo,
                      origin: LvInfo) -> str | None:
    name = snap.name
    if snap.is_invalid:
        raise NotSupported(f"lvm: snapshot {vg}/{name} overflowed its copy-on-write space "
                           "and is invalid; it cannot be reverted to")
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
                 timeout: float | None = None) -> bool:
    """Wait until LVM has dropped the merged snapshot from its metadata
    (at most ``timeout`` seconds, ``MERGE_TIMEOUT`` by default).

    :returns: ``False`` when the snapshot turned out invalid: an overflowed
        snapshot is never merged, however long one waits.
    """
    timeout = MERGE_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    polled = False
    while True:
        snap = cmds.lv(vg, name)
        if snap is None:
            return True
        if snap.is_invalid:
            return False
        if not snap.is_merging:
            raise BackendError(f"lvm: {vg}/{name} is not merging into {lv}; nothing to wait for")
        if time.monotonic() > deadline:
            raise BackendError(f"lvm: merge of {vg}/{name} did not finish within "
                               f"{timeout:.0f}s; run 'snaptree recover' later")
        if not polled:
            cmds.poll(vg, lv)  # make sure some process finishes the merge's metadata
            polled = True
        time.sleep(1)


def drop_failed_merge(cmds: LvmCommands, vg: str, lv: str, name: str) -> None:
    """Remove ``name``, an overflowed snapshot LVM was told to merge into closed ``vg/lv``.

    LVM refuses to remove a merging snapshot until an activation of the
    origin has tried the merge and found the snapshot invalid, so the
    origin is activated once more (and left inactive if it was).
    """
    origin = cmds.lv(vg, lv)
    was_inactive = origin is not None and not origin.is_active
    if not was_inactive:
        cmds.deactivate(vg, lv)
    cmds.activate(vg, lv)
    cmds.remove(vg, name)
    if was_inactive:
        restore_inactive(cmds, vg, lv)


def _overflow_line(vg: str, lv: str, name: str, snapshot_id: str, *, removed: bool) -> str:
    head = (f"revert to snapshot {snapshot_id} failed: {name} overflowed its copy-on-write "
            f"space before its deferred merge could run, so {vg}/{lv} keeps its current content")
    if removed:
        return head + "; the invalid snapshot was removed"
    return head + "; close the volume and run 'snaptree recover' to remove the invalid snapshot"


def finish_thick(cmds: LvmCommands, vg: str, lv: str,
                 existing: dict[str, LvInfo] | None = None,
                 failures: list[str] | None = None) -> list[str]:
    """Finish merges snaptree started on ``vg/lv`` and re-create their snapshots.

    A deferred merge whose snapshot overflowed meanwhile can never run: that
    revert failed.  Once the origin is closed the invalid snapshot is
    removed and its marker cleared; the lines saying so also go to
    ``failures``.

    :param existing: ``cmds.lv_map(vg)`` if the caller has it (saves an ``lvs``).
    """
    lines: list[str] = []
    failures = failures if failures is not None else []
    existing = existing if existing is not None else cmds.lv_map(vg)
    origin = existing.get(lv)
    if origin is None or not pending_tags(origin.tags):
        return lines
    for tag, kind, snapshot_id, size in pending_tags(origin.tags):
        name = snapshot_lv_name(lv, snapshot_id)
        snap = existing.get(name)
        if snap is not None and snap.is_merging:
            lines += _finish_deferred(cmds, vg, lv, tag, snap, size, failures)
            continue
        if snap is not None:
            # the merge never started (crash before lvconvert): nothing to re-create
            cmds.del_tag(vg, lv, tag)
            continue
        if kind == "remake":
            cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
            lines.append(f"re-created snapshot {name} after the merge")
        else:
            lines.append(f"snapshot {name} was consumed by a merge that ran when {vg}/{lv} "
                         "was activated elsewhere; it no longer exists")
        cmds.del_tag(vg, lv, tag)
    return lines


def _finish_deferred(cmds: LvmCommands, vg: str, lv: str, tag: str, snap: LvInfo, size: int,
                     failures: list[str]) -> list[str]:
    """Run the merge of ``snap`` that LVM deferred, and re-create the snapshot."""
    name, snapshot_id = snap.name, _PENDING.match(tag)[2]
    origin = cmds.lv(vg, lv)
    if origin.is_open:
        if not snap.is_invalid:
            return [f"merge of {name} still pending: {vg}/{lv} is open"]
        failures.append(_overflow_line(vg, lv, name, snapshot_id, removed=False))
        return [failures[-1]]
    # re-activation starts the deferred merge; nobody else holds the origin now
    was_inactive = not origin.is_active
    cmds.deactivate(vg, lv)
    cmds.activate(vg, lv)
    if _wait_merged(cmds, vg, lv, name):
        lines = [f"finished the deferred merge of {name} into {lv}"]
        cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
        lines.append(f"re-created snapshot {name} after the merge")
    else:
        # this activation found the snapshot invalid, and LVM lets it be removed now
        cmds.remove(vg, name)
        failures.append(_overflow_line(vg, lv, name, snapshot_id, removed=True))
        lines = [failures[-1]]
    cmds.del_tag(vg, lv, tag)
    if was_inactive:
        restore_inactive(cmds, vg, lv)
    return lines
