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
    re-creates the snapshot with the same name and size.  A tag on the
    origin, ``snaptree-remake.<id>.<bytes>``, marks the window so a crash
    inside it is finished by :func:`finish_thick`.

    Nobody may write in that window, crash or not, or the re-created
    snapshot would hold later data.  LVM refuses to merge into a read-only
    origin, but runs a merge that waits for the next activation into one.
    So the closed origin is deactivated, the merge started (it now waits),
    the origin made read-only and, if it is still inactive then, tagged
    ``snaptree-sealed.<id>``; then it is activated (the merge runs), the
    snapshot re-created and the origin made writable again.  A crash before
    the seal whose origin somebody else activates lets the merge run on a
    writable volume: :func:`finish_thick` then reports the snapshot as
    consumed and does not re-create it (a ``snaptree-consumed.<id>`` tag
    lets the revert that ``recover`` redoes end there).  Where the origin
    cannot be deactivated because another snapshot of it is open (mapped),
    the merge runs unsealed, with the same outcome after a crash.

    LVM merges only into an active origin; an inactive one would take the
    merge at its next activation, out of snaptree's sight.  So an inactive
    origin is activated for the merge and deactivated again afterwards; it
    is tagged ``snaptree-activated.<id>`` first, so that after a crash
    :func:`finish_thick` deactivates it again unless somebody opened it.

    When the origin is open, LVM defers the merge to the origin's next
    activation.  snaptree tags the origin ``snaptree-deferred.<id>.<bytes>``
    and says so.  ``snaptree recover``, once the origin is closed,
    deactivates and re-activates it, waits for the merge and re-creates the
    snapshot.  If something else activated the origin first (a reboot), the
    merge has happened and the origin may since have changed: the snapshot
    is then reported as consumed, never re-created from later data.  If the
    snapshot overflowed while it waited, LVM can never merge it: the revert
    failed, and recover says so with a :class:`~snaptree.model.RevertFailed`
    line (the core makes the snapshot current before the revert current
    again) and removes the invalid snapshot once the origin is closed
    (:func:`drop_failed_merge` does the same for a delete).
"""

from __future__ import annotations

import logging
import re
import time

from snaptree.errors import BackendError, NotSupported, VolumeInUse, VolumeNotFound
from snaptree.model import RevertFailed

from .lvmcmd import LvInfo, LvmCommands
from .names import match_snapshot_lv, revert_old_name, revert_temp_name, snapshot_lv_name

__all__ = ["revert_thin", "revert_thick", "finish_thin", "finish_thick", "SNAPSHOT_TAG",
           "pending_tags", "is_marker_tag", "consumed_tag", "activate_marked", "restore_inactive",
           "drop_failed_merge"]

log = logging.getLogger("snaptree.lvm")

#: Tag on every snapshot LV snaptree makes.
SNAPSHOT_TAG = "snaptree"
_PENDING = re.compile(r"^snaptree-(remake|deferred)\.([0-9a-f]{16})\.([0-9]+)$")
_STATE_TAG = re.compile(r"^snaptree-(sealed|activated|consumed)\.([0-9a-f]{16})$")
#: Seconds to wait for a merge LVM runs in the background.
MERGE_TIMEOUT = 600.0
_DEFERRED_WORDS = ("Delaying merge", "will occur on next activation")


def is_marker_tag(tag: str) -> bool:
    """Whether ``tag`` is one of the markers snaptree puts on an origin during a revert."""
    return bool(_PENDING.match(tag) or _STATE_TAG.match(tag))


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
                              tags=[t for t in origin.tags if not is_marker_tag(t)])
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


def _sealed_tag(snapshot_id: str) -> str:
    return f"snaptree-sealed.{snapshot_id}"


def _activated_tag(snapshot_id: str) -> str:
    return f"snaptree-activated.{snapshot_id}"


def consumed_tag(snapshot_id: str) -> str:
    """Marks an origin whose interrupted revert consumed the snapshot: the
    revert, redone by ``recover``, ends there instead of failing."""
    return f"snaptree-consumed.{snapshot_id}"


def activate_marked(cmds: LvmCommands, vg: str, lv: str, snapshot_id: str) -> None:
    """Activate inactive ``vg/lv`` for snaptree's own use, tagging it first
    (``snaptree-activated.<id>``): after a crash, :func:`finish_thick`
    deactivates it again.  :func:`restore_inactive` with ``snapshot_id`` undoes it."""
    cmds.add_tag(vg, lv, _activated_tag(snapshot_id))
    cmds.activate(vg, lv)  # with -K: an origin that skips activation is merged now too


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
    if snap is None and consumed_tag(snapshot_id) in origin.tags:
        cmds.del_tag(vg, lv, consumed_tag(snapshot_id))
        return (f"lvm: the revert of {vg}/{lv} merged {name} while the volume could be written "
                "to, so the snapshot was not re-created")
    if snap is None or snap.is_merging:
        # a revert redone after a crash, or a deferred merge still waiting
        lines = finish_thick(cmds, vg, lv, existing)
        failed = [line for line in lines if isinstance(line, RevertFailed)]
        if failed:
            raise NotSupported(f"lvm: {vg}/{lv}: {failed[0]}")
        if cmds.lv(vg, name) is None:
            raise VolumeNotFound(f"lvm: snapshot {vg}/{name} does not exist; cannot revert")
        return "; ".join(lines) if any("pending" in line for line in lines) else None
    was_inactive = not origin.is_active
    if was_inactive:
        activate_marked(cmds, vg, lv, snapshot_id)
        existing = cmds.lv_map(vg)  # only an active snapshot shows whether it overflowed
        snap, origin = existing.get(name, snap), existing.get(lv, origin)
    try:
        warning = _merge_and_remake(cmds, vg, lv, snapshot_id, snap, origin)
    except BaseException:
        if was_inactive and not pending_tags(cmds.lv(vg, lv).tags):
            restore_inactive(cmds, vg, lv, snapshot_id, quiet=True)
        raise
    if was_inactive and warning is None:
        restore_inactive(cmds, vg, lv, snapshot_id)
    elif was_inactive and not pending_tags(cmds.lv(vg, lv).tags):
        cmds.del_tag(vg, lv, _activated_tag(snapshot_id))  # activated by somebody else since
    return warning


def restore_inactive(cmds: LvmCommands, vg: str, lv: str, snapshot_id: str | None = None, *,
                     quiet: bool = False) -> bool:
    """Deactivate ``vg/lv`` again after snaptree activated it for a merge.

    Left active when somebody opened it meanwhile or a merge still runs.
    With ``snapshot_id``, the ``snaptree-activated`` tag
    :func:`activate_marked` put there is removed too (unless a merge still
    runs).  With ``quiet`` (another error is on its way up) a failure is
    logged instead of raised.  Returns whether it was deactivated.
    """
    try:
        now = cmds.lv(vg, lv)
        if now is None or now.is_merging:
            return False
        deactivated = False
        if now.is_active and not now.is_open:
            cmds.deactivate(vg, lv)
            deactivated = True
        if snapshot_id is not None and _activated_tag(snapshot_id) in now.tags:
            cmds.del_tag(vg, lv, _activated_tag(snapshot_id))
        return deactivated
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
    if origin.is_open:
        return _merge_deferred(cmds, vg, lv, snapshot_id, name, size)
    remake = f"snaptree-remake.{snapshot_id}.{size}"
    cmds.add_tag(vg, lv, remake)
    try:
        # inactive, the origin takes the merge at its next activation, and it can be made
        # read-only in between: LVM refuses to merge into a read-only origin, yet runs a
        # pending merge into one
        cmds.deactivate(vg, lv)
    except VolumeInUse:
        now = cmds.lv(vg, lv)
        if now is not None and now.is_open:  # opened since we looked: LVM defers the merge
            cmds.del_tag(vg, lv, remake)
            return _merge_deferred(cmds, vg, lv, snapshot_id, name, size)
        # another snapshot of it is open (mapped): merge unsealed, as LVM does by itself;
        # a crash before the re-create then leaves the snapshot consumed, not re-created
        cmds.merge(vg, name)
        _wait_merged(cmds, vg, lv, name)
        cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
        cmds.del_tag(vg, lv, remake)
        return None
    cmds.merge(vg, name)  # deferred: the origin is inactive
    if not _seal(cmds, vg, lv, snapshot_id):
        cmds.del_tag(vg, lv, remake)
        warning = (f"lvm: {vg}/{lv} was activated outside snaptree while its merge of {name} "
                   "was being prepared, so the merge ran there and the snapshot is consumed")
        log.warning(warning)
        return warning
    _finish_sealed(cmds, vg, lv, name, size, [remake, _sealed_tag(snapshot_id)])
    return None


def _merge_deferred(cmds: LvmCommands, vg: str, lv: str, snapshot_id: str, name: str,
                    size: int) -> str:
    cmds.add_tag(vg, lv, f"snaptree-deferred.{snapshot_id}.{size}")
    output = cmds.merge(vg, name)
    if not any(words in output for words in _DEFERRED_WORDS):
        log.debug("lvm: merge of %s/%s ran at once: %s", vg, name, output)
    warning = (f"lvm: {vg}/{lv} is open, so LVM deferred the merge of {name} to the volume's "
               f"next activation; the content changes then. Close the volume and run "
               f"'snaptree recover' to finish the revert and keep the snapshot")
    log.warning(warning)
    return warning


def _seal(cmds: LvmCommands, vg: str, lv: str, snapshot_id: str) -> bool:
    """Make inactive ``vg/lv``, whose merge waits for its next activation,
    read-only, and tag it ``snaptree-sealed.<id>``: nobody can write to it
    from the merge's start to the re-creation of the snapshot.

    The tag is added only once the origin is read-only and still inactive,
    so a crash in between leaves no seal behind.  Returns ``False`` (the
    origin read-write again) when somebody activated it first.
    """
    if cmds.lv(vg, lv).is_writable:
        cmds.change(vg, lv, writable=False)
    now = cmds.lv(vg, lv)
    if now.is_active:
        cmds.change(vg, lv, writable=True)  # perhaps a VM's disk now
        return False
    cmds.add_tag(vg, lv, _sealed_tag(snapshot_id))
    return True


def _finish_sealed(cmds: LvmCommands, vg: str, lv: str, name: str, size: int,
                   tags: list[str]) -> None:
    """Run the merge into sealed ``vg/lv``, re-create the snapshot, unseal."""
    if not cmds.lv(vg, lv).is_active:
        cmds.activate(vg, lv)  # starts the merge
    if not _wait_merged(cmds, vg, lv, name):
        raise BackendError(f"lvm: {vg}/{name} turned invalid while merging into {lv}")
    cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
    cmds.change(vg, lv, writable=True, del_tags=tags)


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


def _overflow_line(vg: str, lv: str, name: str, snapshot_id: str, *,
                   removed: bool) -> RevertFailed:
    head = (f"revert to snapshot {snapshot_id} failed: {name} overflowed its copy-on-write "
            f"space before its deferred merge could run, so {vg}/{lv} keeps its current content")
    if removed:
        return RevertFailed(snapshot_id, head + "; the invalid snapshot was removed")
    return RevertFailed(snapshot_id, head + "; close the volume and run 'snaptree recover' to "
                        "remove the invalid snapshot")


def finish_thick(cmds: LvmCommands, vg: str, lv: str,
                 existing: dict[str, LvInfo] | None = None) -> list[str | RevertFailed]:
    """Finish merges snaptree started on ``vg/lv`` and re-create their snapshots.

    A snapshot whose merge ran while the origin was sealed (read-only since
    before the merge began, ``snaptree-sealed.<id>``) is re-created and the
    origin made writable again.  One whose merge may have run unsealed
    (a crash between the merge command and the seal, then an activation
    outside snaptree) is reported as consumed, never re-created from what
    may be later data.

    A deferred merge whose snapshot overflowed meanwhile can never run: that
    revert failed, reported as a :class:`~snaptree.model.RevertFailed` line.
    Once the origin is closed the invalid snapshot is removed and its marker
    cleared.

    Last, an origin snaptree activated (``snaptree-activated.<id>``) is
    deactivated again unless somebody opened it meanwhile.

    :param existing: ``cmds.lv_map(vg)`` if the caller has it (saves an ``lvs``).
    """
    lines: list[str | RevertFailed] = []
    existing = existing if existing is not None else cmds.lv_map(vg)
    origin = existing.get(lv)
    if origin is None or not any(is_marker_tag(t) for t in origin.tags):
        return lines
    sealed = {_sealed_tag(sid) for sid in _tag_ids(origin.tags, "sealed")}
    for tag, kind, snapshot_id, size in pending_tags(origin.tags):
        name = snapshot_lv_name(lv, snapshot_id)
        snap = existing.get(name)
        if kind == "remake":
            lines += _finish_remake(cmds, vg, lv, tag, snapshot_id, size, snap,
                                    _sealed_tag(snapshot_id) in sealed)
        elif snap is not None and snap.is_merging:
            lines += _finish_deferred(cmds, vg, lv, tag, snap, size)
        elif snap is not None:
            cmds.del_tag(vg, lv, tag)  # the merge never started
        else:
            lines.append(f"snapshot {name} was consumed by a merge that ran when {vg}/{lv} "
                         "was activated elsewhere; it no longer exists")
            cmds.del_tag(vg, lv, tag)
    now = cmds.lv(vg, lv)
    left = [t for t in now.tags if _STATE_TAG.match(t) and _STATE_TAG.match(t)[1] != "consumed"
            ] if now else []
    if now is not None and not pending_tags(now.tags) and left:
        if not now.is_writable and any(t.startswith("snaptree-sealed.") for t in left):
            cmds.change(vg, lv, writable=True)  # a crash before the merge could begin
        activated = [t for t in left if t.startswith("snaptree-activated.")]
        if activated and restore_inactive(cmds, vg, lv):
            lines.append(f"deactivated {vg}/{lv} again: snaptree had activated it for a revert")
        cmds.change(vg, lv, del_tags=left)
    return lines


def _finish_remake(cmds: LvmCommands, vg: str, lv: str, tag: str, snapshot_id: str, size: int,
                   snap: LvInfo | None, sealed: bool) -> list[str | RevertFailed]:
    """Finish a revert of closed ``vg/lv`` cut short by a crash (the
    ``snaptree-remake`` tag), from whichever step it reached."""
    name = snapshot_lv_name(lv, snapshot_id)
    origin = cmds.lv(vg, lv)
    seal = _sealed_tag(snapshot_id)
    if snap is not None and not snap.is_merging:
        # the merge never started, or the snapshot is re-created already
        cmds.change(vg, lv, writable=True if not origin.is_writable else None,
                    del_tags=[t for t in (tag, seal) if t in origin.tags])
        _reactivate(cmds, vg, lv)
        return []
    if snap is not None and not sealed and not origin.is_active:
        sealed = _seal(cmds, vg, lv, snapshot_id)  # cut short before the seal
    if snap is not None and sealed:
        _finish_sealed(cmds, vg, lv, name, size, [tag, seal])
        _reactivate(cmds, vg, lv)
        return [f"finished the merge of {name} into {lv}",
                f"re-created snapshot {name} after the merge"]
    if snap is None and sealed:
        # read-only since before the merge began: it holds exactly the snapshot's content
        cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
        cmds.change(vg, lv, writable=True, del_tags=[tag, seal])
        _reactivate(cmds, vg, lv)
        return [f"re-created snapshot {name} after the merge"]
    # the merge ran, or runs, outside snaptree's watch on a writable origin
    if snap is not None and not origin.is_open:
        cmds.poll(vg, lv)  # somebody must finish the merge's metadata
    # the revert itself, replayed by recover, ends at the consumed tag
    cmds.change(vg, lv, writable=True if not origin.is_writable else None, del_tags=[tag],
                add_tags=[consumed_tag(snapshot_id)])
    _reactivate(cmds, vg, lv)
    return [f"snapshot {name} was not re-created: its merge ran while {vg}/{lv} could be "
            "written to (activated outside snaptree after a crash), so the volume may hold "
            "later data; the snapshot no longer exists"]


def _reactivate(cmds: LvmCommands, vg: str, lv: str) -> None:
    """Activate ``vg/lv`` again if the revert deactivated it for the merge (the
    ``snaptree-activated`` tag, if any, then deactivates it in :func:`finish_thick`)."""
    now = cmds.lv(vg, lv)
    if now is not None and not now.is_active:
        cmds.activate(vg, lv)


def _tag_ids(tags, kind: str) -> list[str]:
    return [m[2] for m in map(_STATE_TAG.match, tags) if m and m[1] == kind]


def _finish_deferred(cmds: LvmCommands, vg: str, lv: str, tag: str, snap: LvInfo,
                     size: int) -> list[str | RevertFailed]:
    """Run the merge of ``snap`` that LVM deferred, and re-create the snapshot."""
    name, snapshot_id = snap.name, _PENDING.match(tag)[2]
    origin = cmds.lv(vg, lv)
    if origin.is_open:
        if not snap.is_invalid:
            return [f"merge of {name} still pending: {vg}/{lv} is open"]
        return [_overflow_line(vg, lv, name, snapshot_id, removed=False)]
    # re-activation starts the deferred merge; nobody else holds the origin now
    was_inactive = not origin.is_active
    cmds.deactivate(vg, lv)
    cmds.activate(vg, lv)
    lines: list[str | RevertFailed]
    if _wait_merged(cmds, vg, lv, name):
        lines = [f"finished the deferred merge of {name} into {lv}"]
        cmds.create_thick_snapshot(vg, lv, name, f"{size}b", tags=[SNAPSHOT_TAG])
        lines.append(f"re-created snapshot {name} after the merge")
    else:
        # this activation found the snapshot invalid, and LVM lets it be removed now
        cmds.remove(vg, name)
        lines = [_overflow_line(vg, lv, name, snapshot_id, removed=True)]
    cmds.del_tag(vg, lv, tag)
    if was_inactive:
        restore_inactive(cmds, vg, lv)
    return lines
