"""Finish or undo what a crash left half-done, and report drift.

``recover`` reads the journal's open entries.  Creates are rolled back (every
member that carries the snapshot id is removed, found through each backend's
``snaptree_list``), deletes and reverts are rolled forward.  Groups whose
lock is held are skipped: a held lock means a live process is working there.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

import attrs

from .boot import boot_id
from .boundary import checked_claims
from .coordinator import Coordinator, batches_for
from .errors import NotFound, PluginError, SnaptreeError
from .locking import group_lock, try_group_lock
from .model import Group, MemberSnapshot, RevertFailed, SnapshotState

__all__ = ["recover", "recover_held", "check", "needs_recovery", "RecoveryReport",
           "DriftReport"]


@attrs.define
class RecoveryReport:
    actions: list[str] = attrs.field(factory=list)
    skipped_groups: list[str] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class DriftReport:
    group: str
    #: catalog members whose storage object is gone
    missing: list[dict[str, str]] = attrs.field(factory=list)
    #: storage objects made by snaptree that the catalog does not know
    orphans: list[dict[str, str]] = attrs.field(factory=list)
    #: storage objects made by other tools
    foreign: list[dict[str, str]] = attrs.field(factory=list)
    #: members that can no longer be reverted to
    invalid: list[dict[str, str]] = attrs.field(factory=list)
    #: snapshots not in state complete
    unfinished: list[dict[str, str]] = attrs.field(factory=list)
    #: volumes that could not be listed, with the reason
    unreadable: list[dict[str, str]] = attrs.field(factory=list)
    #: complete snapshots with no member left ('group remove --forget-members'
    #: dropped them all): nothing to revert to, only to delete
    empty: list[dict[str, str]] = attrs.field(factory=list)
    #: operations a crash or an interrupt cut short (open journal entries):
    #: the volumes may not match the catalog until 'snaptree recover' ran
    interrupted: list[dict[str, str]] = attrs.field(factory=list)
    #: volumes of the group their backend no longer finds or accepts, with the reason
    unclaimed: list[dict[str, str]] = attrs.field(factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.orphans or self.invalid or self.unfinished
                    or self.unreadable or self.empty or self.interrupted or self.unclaimed)

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["clean"] = self.clean
        return out


def _storage_members(coord: Coordinator, group: Group) -> dict[str, list[MemberSnapshot]]:
    found: dict[str, list[MemberSnapshot]] = {}
    for volume in group.volumes:
        listed = coord.hook.snaptree_list(backend=volume.backend, volume=volume)
        found[volume.spec] = list(listed or ())
    return found


def recover(coord: Coordinator, group_name: str | None = None) -> RecoveryReport:
    report = RecoveryReport()
    catalog = coord.catalog
    groups = [group_name] if group_name else catalog.group_names()
    for name in groups:
        group = catalog.get_group(name)
        if group is None:
            continue
        with try_group_lock(coord.state_dir, name) as taken:
            if not taken:
                # a group asked for by name is always said to be skipped;
                # of all groups, only those with something left to recover
                if group_name or catalog.has_open_journal(name):
                    report.skipped_groups.append(name)
                continue
            _recover_or_report(coord, group, report)
    return report


def recover_held(coord: Coordinator, group_name: str) -> RecoveryReport:
    """:func:`recover` for one group whose lock the caller holds already."""
    report = RecoveryReport()
    group = coord.catalog.get_group(group_name)
    if group is not None:
        _recover_or_report(coord, group, report)
    return report


def _recover_or_report(coord: Coordinator, group: Group, report: RecoveryReport) -> None:
    try:
        # A backend no installed plugin implements answers nothing, which
        # would read as "nothing there": refuse instead, entries left open.
        for volume in group.volumes:
            coord.plugins.backend(volume.backend)
        _recover_group(coord, group, report)
    except SnaptreeError as err:
        report.errors.append(f"{group.name}: {err.one_line()}")


def stale_epochs(catalog, group_name: str) -> list[str]:
    """Prefixes of the group's unsynced creates begun in an earlier boot."""
    boot = boot_id()
    return [p for p, b in catalog.intent_epochs(group_name).items() if b != boot]


def needs_recovery(catalog, group_name: str) -> bool:
    """True when the group has open journal entries or creates a reboot may have orphaned."""
    return catalog.has_open_journal(group_name) or bool(stale_epochs(catalog, group_name))


def _recover_group(coord: Coordinator, group: Group, report: RecoveryReport) -> None:
    catalog = coord.catalog
    entries = catalog.journal_open(group.name)
    for volume in group.volumes:
        for line in coord.hook.snaptree_recover_volume(backend=volume.backend, volume=volume) or ():
            report.actions.append(f"{group.name}: {volume.spec}: {line}")
            if isinstance(line, RevertFailed):
                _undo_failed_revert(coord, group, line, report)
    _replay_journal(coord, group, entries, report)
    _remove_lost_creates(coord, group, report)


def _undo_failed_revert(coord: Coordinator, group: Group, failed: RevertFailed,
                        report: RecoveryReport) -> None:
    """A revert the journal says is done did not happen on storage: the
    snapshot current before it is current again (while the revert's target
    still is), and the revert's entry is marked failed so this runs once."""
    catalog = coord.catalog
    if catalog.current_id(group.name) != failed.snapshot_id:
        return
    entry = catalog.journal_last(group.name, "revert", "done")
    if entry is None or entry["snapshot_id"] != failed.snapshot_id:
        return
    previous = entry["payload"].get("previous")
    before = catalog.get_snapshot_by_id(previous) if previous else None
    with catalog.write("recover-failed-revert") as db:
        catalog.set_current(group.name, before.snapshot_id if before else None, db)
        catalog.journal_finish(entry["op_id"], "failed", db, error=failed.message)
    target = catalog.get_snapshot_by_id(failed.snapshot_id)
    reverted = repr(target.name) if target else failed.snapshot_id
    now = f"{before.name!r} is current again" if before else "no snapshot is current"
    report.actions.append(f"{group.name}: the revert to {reverted} failed; {now}")


def _remove_lost_creates(coord: Coordinator, group: Group, report: RecoveryReport) -> None:
    """After a reboot: remove what creates made whose unsynced journal entry
    the power cut erased (their ids carry an earlier boot's epoch prefix and
    the catalog does not know them); then forget those epochs."""
    catalog = coord.catalog
    stale = stale_epochs(catalog, group.name)
    if not stale:
        return
    known = {s.snapshot_id for s in catalog.list_snapshots(group.name)}
    on_storage = _storage_members(coord, group)
    for volume in group.volumes:
        lost: dict[str, list[MemberSnapshot]] = {}
        for member in on_storage[volume.spec]:
            sid = member.snapshot_id
            if sid and sid[:8] in stale and sid not in known:
                lost.setdefault(sid, []).append(member)
        for sid, members in lost.items():
            ctx = coord.context(group, sid, sid, {})
            coord.hook.snaptree_delete(backend=volume.backend, members=members, ctx=ctx)
            for member in members:
                report.actions.append(
                    f"{group.name}: removed {member.ref} on {volume.spec}, left by a create whose "
                    "journal entry was lost with a reboot")
    with catalog.write("recover-epochs") as db:
        for prefix in stale:
            catalog.drop_intent_epoch(group.name, prefix, db)


def _replay_journal(coord: Coordinator, group: Group, entries, report: RecoveryReport) -> None:
    catalog = coord.catalog
    for entry in entries:
        op = entry["operation"]
        sid = entry["snapshot_id"]
        if op == "create":
            _rollback_create(coord, group, sid, report)
            with catalog.write("recover-create") as db:
                catalog.journal_finish(entry["op_id"], "rolled-back", db, error="interrupted")
        elif op == "delete":
            for each in entry["payload"].get("ids", [sid]):
                coord.delete_one(group, each)
                report.actions.append(f"{group.name}: finished deleting snapshot {each}")
            with catalog.write("recover-delete") as db:
                catalog.journal_finish(entry["op_id"], "done", db, error="finished by recover")
        elif op == "revert":
            snap = catalog.get_snapshot_by_id(sid)
            if snap is not None and snap.state is SnapshotState.COMPLETE:
                _redo_revert(coord, group, snap,
                             disks_only=bool(entry["payload"].get("disks_only")))
                report.actions.append(f"{group.name}: finished reverting to {snap.name!r}")
                with catalog.write("recover-revert") as db:
                    catalog.set_current(group.name, sid, db)
                    catalog.journal_finish(entry["op_id"], "done", db, error="finished by recover")
            else:
                with catalog.write("recover-revert") as db:
                    catalog.journal_finish(entry["op_id"], "abandoned", db, error="target gone")
                report.actions.append(
                    f"{group.name}: abandoned an interrupted revert: its snapshot is gone, and "
                    "the volumes may be partly reverted")
        else:
            with catalog.write("recover-unknown") as db:
                catalog.journal_finish(entry["op_id"], "abandoned", db, error=f"unknown op {op}")


def _rollback_create(coord: Coordinator, group: Group, snapshot_id: str, report: RecoveryReport) -> None:
    catalog = coord.catalog
    snap = catalog.get_snapshot_by_id(snapshot_id)
    name = snap.name if snap else snapshot_id
    ctx = coord.context(group, snapshot_id, name, {})
    known = {m.volume.spec: m for m in (snap.members if snap else ())}
    on_storage = _storage_members(coord, group)
    for volume in group.volumes:
        targets = [m for m in on_storage.get(volume.spec, []) if m.snapshot_id == snapshot_id]
        if not targets and volume.spec in known:
            targets = [known[volume.spec]]
        if targets:
            coord.hook.snaptree_delete(backend=volume.backend, members=targets, ctx=ctx)
            report.actions.append(f"{group.name}: removed half-made member of {name!r} on {volume.spec}")
    if snap is not None and snap.memory is not None:
        coord.hook.snaptree_memory_delete(group=group, memory=snap.memory, ctx=ctx)
    with catalog.write("recover-create-row") as db:
        catalog.remove_snapshot_row(snapshot_id, db)
    report.actions.append(f"{group.name}: rolled back interrupted create of {name!r}")


def _redo_revert(coord: Coordinator, group: Group, snap, *, disks_only: bool = False) -> None:
    ctx = coord.context(group, snap.snapshot_id, snap.name,
                        {"memory": False, "disks_only": disks_only})
    ctx.scratch["snapshot"] = snap
    by_spec = {m.volume.spec: m for m in snap.members}
    for backend, volumes in batches_for(coord.plugins, group.volumes):
        members = [by_spec[v.spec] for v in volumes if v.spec in by_spec]
        if members:
            coord.hook.snaptree_revert(backend=backend, members=members, ctx=ctx)


def check(coord: Coordinator, group_name: str) -> DriftReport:
    """Compare ``group_name``'s catalog entries with its storage.

    Read under the group's lock (waiting for it as long as any operation
    does, then :class:`~snaptree.errors.Busy`): an operation in progress
    shows half-done state that is no drift.  What a crash or an interrupt
    left unfinished is drift until ``recover`` ran; check itself never
    recovers anything.
    """
    coord.group(group_name)  # no lock file for a group that does not exist
    with group_lock(coord.state_dir, group_name, coord.lock_timeout):
        return _check_locked(coord, coord.group(group_name))


def _unclaimed(coord: Coordinator, group: Group, volume) -> str | None:
    """Why ``volume``'s backend no longer finds or takes it, or None.

    Gone (not found) is drift.  A claim refused for another reason is drift
    only if the backend's snapshot checks refuse the volume too: a rule for
    joining a group (a name an older version let in) is not.
    """
    try:
        claims = checked_claims(coord.plugins, volume.backend, volume.locator,
                                coord.hook.snaptree_claim_volume(backend=volume.backend,
                                                                 locator=volume.locator))
    except (NotFound, PluginError) as err:  # gone, or a claim no longer to be trusted
        return err.one_line()
    except SnaptreeError as err:
        try:
            coord.hook.snaptree_prepare(backend=volume.backend, operation="snapshot",
                                        volumes=[volume],
                                        ctx=coord.context(group, "", "", {}))
        except SnaptreeError:
            return err.one_line()
        return None
    if not claims:
        return f"no plugin claims volume {volume.spec}"
    if all(v.spec != volume.spec for v in claims):
        return f"its backend now names it {claims[0].spec}"
    return None


def _describe_open(catalog, entry) -> dict[str, str]:
    snap = catalog.get_snapshot_by_id(entry["snapshot_id"] or "")
    name = snap.name if snap is not None else entry["payload"].get("name")
    return {"operation": entry["operation"],
            "snapshot": name if name else (entry["snapshot_id"] or ""),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entry["started"])),
            "fix": f"snaptree recover {shlex.quote(entry['group_name'])}"}


def _check_locked(coord: Coordinator, group: Group) -> DriftReport:
    group_name = group.name
    report = DriftReport(group=group_name)
    report.interrupted = [_describe_open(coord.catalog, e)
                          for e in coord.catalog.journal_open(group_name)]
    snaps = coord.catalog.list_snapshots(group_name)
    for snap in snaps:
        if snap.state is not SnapshotState.COMPLETE:
            report.unfinished.append({"snapshot": snap.name, "state": snap.state.value})
        elif not snap.members and all(group.predates(snap.created, v.spec) for v in group.volumes):
            report.empty.append({"snapshot": snap.name})  # else its members are missing (below)
    known_ids = {s.snapshot_id: s for s in snaps}
    for volume in group.volumes:
        try:
            coord.plugins.backend(volume.backend)  # else nothing answers: not "nothing there"
        except SnaptreeError as err:
            report.unreadable.append({"volume": volume.spec, "error": err.one_line()})
            continue
        gone = _unclaimed(coord, group, volume)
        if gone is not None:
            report.unclaimed.append({"volume": volume.spec, "error": gone})
        try:
            listed = list(coord.hook.snaptree_list(backend=volume.backend, volume=volume) or ())
        except SnaptreeError as err:
            report.unreadable.append({"volume": volume.spec, "error": err.one_line()})
            continue
        stored_ids = set()
        for m in listed:
            if not m.snapshot_id:
                report.foreign.append({"volume": volume.spec, "ref": m.ref})
                continue
            stored_ids.add(m.snapshot_id)
            if m.snapshot_id not in known_ids:
                report.orphans.append({"volume": volume.spec, "ref": m.ref, "snapshot_id": m.snapshot_id})
            elif not m.valid:
                report.invalid.append({"volume": volume.spec, "ref": m.ref,
                                       "snapshot": known_ids[m.snapshot_id].name})
        for snap in snaps:
            member = next((m for m in snap.members if m.volume.spec == volume.spec), None)
            if snap.state is not SnapshotState.COMPLETE or (
                    member is None and group.predates(snap.created, volume.spec)):
                continue  # unfinished (reported above), or taken before the volume joined
            if member is None or snap.snapshot_id not in stored_ids:
                report.missing.append({"volume": volume.spec, "snapshot": snap.name,
                                       "ref": member.ref if member else ""})
    return report
