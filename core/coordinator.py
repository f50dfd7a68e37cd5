"""Create, revert and delete group snapshots across backends.

Every mutating operation follows one pattern: validate everything (no side
effects), take the group lock, journal the intent, do the backend work one
step at a time with a crash checkpoint between steps, then commit catalog
state and close the journal entry in one transaction.  A failure undoes what
was made; a crash is finished or undone by :mod:`snaptree.recovery`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import attrs

from . import faults
from .catalog import Catalog
from .boot import boot_id
from .boundary import sort_members
from .errors import (
    Conflict,
    GroupNotFound,
    InvalidInput,
    NotSupported,
    PluginError,
    SnaptreeError,
    SnapshotNotFound,
)
from .locking import group_lock
from .model import Group, MemberSnapshot, OpContext, Snapshot, SnapshotState, Volume
from .names import check_name
from .plugins import PluginSet

__all__ = ["Coordinator", "new_snapshot_id"]


def new_snapshot_id(prefix: str | None = None) -> str:
    """16 hex digits: ``prefix`` (8, an epoch of unsynced creates) or random, then 8 random."""
    return (prefix or secrets.token_hex(4)) + secrets.token_hex(4)


def batches_for(plugins: PluginSet, volumes: Sequence[Volume]) -> list[tuple[str, list[Volume]]]:
    """Split volumes into backend calls: one batch per atomic backend, else one each."""
    out: list[tuple[str, list[Volume]]] = []
    atomic: dict[str, list[Volume]] = {}
    for volume in volumes:
        info = plugins.backend(volume.backend)
        if info.capabilities.atomic_batch:
            if volume.backend not in atomic:
                atomic[volume.backend] = []
                out.append((volume.backend, atomic[volume.backend]))
            atomic[volume.backend].append(volume)
        else:
            out.append((volume.backend, [volume]))
    return out


class _Operation:
    """The span between ``snaptree_operation_begin`` and ``_end`` of one operation."""

    def __init__(self, hook: Any, group: Group, operation: str, ctx: OpContext,
                 warnings: list[str]):
        self.hook, self.group, self.operation, self.ctx = hook, group, operation, ctx
        self.warnings = warnings
        self.ended = False

    def end(self, error: BaseException | None = None) -> None:
        """Let plugins close what they opened (once); their errors become warnings."""
        if self.ended:
            return
        self.ended = True
        try:
            self.hook.snaptree_operation_end(group=self.group, operation=self.operation,
                                             ctx=self.ctx, error=error)
        except Exception as err:
            self.warnings.append(f"closing after {self.operation}: {err}")


class Coordinator:
    """Runs group operations against a catalog and a plugin set."""

    def __init__(self, catalog: Catalog, plugins: PluginSet, state_dir: str, *,
                 lock_timeout: float = 30.0, progress: Callable[..., None] | None = None):
        self.catalog = catalog
        self.plugins = plugins
        self.state_dir = state_dir
        self.lock_timeout = lock_timeout
        self.progress = progress
        self._local = threading.local()
        #: Called with a group's name and the operation (``create``,
        #: ``revert``, ``delete``, ...) as soon as the operation holds the
        #: group's lock, before it reads the group (the API finishes there
        #: what an interrupted operation left open).
        self.on_locked: Callable[[str, str], None] | None = None

    @property
    def warnings(self) -> list[str]:
        """Warnings backends left in ``ctx.scratch["warnings"]`` during the
        last operation of the calling thread."""
        try:
            return self._local.warnings
        except AttributeError:
            self._local.warnings = []
            return self._local.warnings

    @warnings.setter
    def warnings(self, value: list[str]) -> None:
        self._local.warnings = value

    @property
    def hook(self):
        return self.plugins.hook

    @contextlib.contextmanager
    def locked(self, group_name: str, operation: str) -> Iterator[None]:
        """Hold ``group_name``'s lock for ``operation`` (then call :attr:`on_locked`).

        :attr:`warnings` start afresh: what an earlier operation warned about
        is not said again after this one.
        """
        self.warnings = []
        with group_lock(self.state_dir, group_name, self.lock_timeout):
            if self.on_locked is not None:
                self.on_locked(group_name, operation)
            yield

    # -- helpers --------------------------------------------------------------

    def group(self, name: str) -> Group:
        group = self.catalog.get_group(name)
        if group is None:
            raise GroupNotFound(f"no group named {name!r}")
        return group

    def snapshot(self, group: str, name: str) -> Snapshot:
        self.group(group)
        snap = self.catalog.get_snapshot(group, name)
        if snap is None:
            raise SnapshotNotFound(f"group {group!r} has no snapshot named {name!r}")
        return snap

    def context(self, group: Group, snapshot_id: str, name: str, options: dict[str, Any]) -> OpContext:
        merged = dict(group.options)
        merged.update(options)
        ctx = OpContext(group=group, snapshot_id=snapshot_id, snapshot_name=name, options=merged,
                        hook=self.hook)
        if self.progress is not None:
            ctx.progress = self.progress
        ctx.scratch["warnings"] = self.warnings
        return ctx

    def _call(self, label: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        faults.checkpoint(f"backend:{label}:before")
        result = fn(**kwargs)
        faults.checkpoint(f"backend:{label}:after")
        return result

    def _prepare(self, operation: str, batches, ctx: OpContext, members=None) -> None:
        by_backend: dict[str, list[Volume]] = {}
        for backend, volumes in batches:
            by_backend.setdefault(backend, []).extend(volumes)
        for backend, volumes in by_backend.items():
            if members is not None:
                ctx.scratch["members"] = [m for m in members if m.backend == backend]
            answered = self.hook.snaptree_prepare(
                backend=backend, operation=operation, volumes=volumes, ctx=ctx)
            if answered is None:
                raise NotSupported(f"no installed plugin implements backend {backend!r}")
        ctx.scratch.pop("members", None)

    @contextlib.contextmanager
    def _operation(self, group: Group, operation: str, ctx: OpContext) -> Iterator[_Operation]:
        """Call ``snaptree_operation_begin`` now and ``_end`` at the latest on leaving."""
        span = _Operation(self.hook, group, operation, ctx, self.warnings)
        try:
            self.hook.snaptree_operation_begin(group=group, operation=operation, ctx=ctx)
            yield span
        except BaseException as err:
            span.end(err)
            raise
        finally:
            span.end()

    def _default_name(self, group: str) -> str:
        base = time.strftime("snap-%Y%m%d-%H%M%S")
        name, n = base, 1
        while self.catalog.get_snapshot(group, name) is not None:
            n += 1
            name = f"{base}-{n}"
        return name

    # -- create ---------------------------------------------------------------

    def create(self, group_name: str, name: str | None = None, *, description: str = "",
               memory: bool = False, options: dict[str, Any] | None = None) -> Snapshot:
        self.warnings = []
        if not self.catalog.has_group(group_name):
            raise GroupNotFound(f"no group named {group_name!r}")
        if name is not None:
            name = check_name(name)  # stored, and compared, in its normal form
        if not isinstance(description, str) or "\x00" in description or len(description) > 4096:
            raise InvalidInput("description must be text without NUL, at most 4096 characters")
        options = dict(options or {})
        options["memory"] = bool(memory)

        # Everything from here reads the group under its lock, once; the
        # backends' checks too, so nothing they checked can change before
        # the journal entry is written.
        with self.locked(group_name, "create"):
            group = self.group(group_name)
            group_name = group.name  # the catalog's spelling of it
            if name is None:
                name = self._default_name(group_name)
            if memory and not group.qmp_socket:
                raise InvalidInput(
                    f"--memory needs a running VM: group {group_name!r} has no QMP socket")
            if self.catalog.get_snapshot(group_name, name) is not None:
                raise Conflict(f"group {group_name!r} already has a snapshot named {name!r}")
            epoch = self._intent_epoch(group_name)
            snapshot_id = new_snapshot_id(epoch)
            while self.catalog.get_snapshot_by_id(snapshot_id) is not None:
                snapshot_id = new_snapshot_id(epoch)
            ctx = self.context(group, snapshot_id, name, options)
            batches = batches_for(self.plugins, group.volumes)
            self._prepare("snapshot", batches, ctx)
            parent_id = group.current_id
            pending = Snapshot(snapshot_id=snapshot_id, group=group_name, name=name,
                               parent=parent_id, created=time.time(), description=description,
                               state=SnapshotState.PENDING, options=options)
            with self._operation(group, "snapshot", ctx) as span:
                made, memory_state = self._create_locked(group, ctx, batches, pending, span,
                                                         synced=epoch is None)
        # what the catalog now holds, without reading it back
        order = {v.spec: i for i, v in enumerate(group.volumes)}
        return attrs.evolve(pending, parent=group.current if parent_id else None,
                            state=SnapshotState.COMPLETE, memory=memory_state,
                            members=tuple(sorted(made, key=lambda m: order.get(m.volume.spec, 0))))

    def _intent_epoch(self, group_name: str) -> str | None:
        """The snapshot-id prefix of this boot's unsynced creates of the group.

        The first create of a group in a boot records (synced) that its
        creates from now on may have journal entries a power cut erases;
        ``recover`` after the next boot looks for what they left on storage
        (see :mod:`snaptree.boot`).  ``None``: the boot is unknown, so every
        journal entry is synced.
        """
        boot = boot_id()
        if boot is None:
            return None
        epochs = self.catalog.intent_epochs(group_name)
        for prefix, epoch_boot in epochs.items():
            if epoch_boot == boot:
                return prefix
        prefix = secrets.token_hex(4)
        while prefix in epochs:
            prefix = secrets.token_hex(4)
        with self.catalog.write("create-epoch") as db:
            self.catalog.add_intent_epoch(group_name, prefix, boot, db)
        return prefix

    def _create_locked(self, group: Group, ctx: OpContext, batches, pending: Snapshot,
                       span: _Operation, *, synced: bool) -> tuple[list[MemberSnapshot], Any]:
        """Journal, snapshot every batch, commit; undo on failure (group locked)."""
        group_name, name, snapshot_id = group.name, pending.name, pending.snapshot_id
        memory = bool(pending.options.get("memory"))
        # Unsynced unless the boot is unknown: a killed process leaves it in
        # the page cache, and the commit's fsync (or any later synced write)
        # makes it durable; only a power cut can erase it, and ``recover``
        # after the reboot then finds what the create made by its epoch.
        with self.catalog.write("create-begin", durable=synced) as db:
            op_id = self.catalog.journal_begin(group_name, "create", snapshot_id,
                                               {"name": name}, db)
            db.execute(
                "INSERT INTO snapshots (snapshot_id, group_name, name, parent_id, created,"
                " description, state, options) VALUES (?,?,?,?,?,?,?,?)",
                (snapshot_id, group_name, name, pending.parent, pending.created,
                 pending.description, SnapshotState.PENDING.value, json.dumps(pending.options)))
        made: list[MemberSnapshot] = []
        #: volumes a backend's snapshot call was asked for, and members it
        #: returned wrongly (never deleted through it: one may name another
        #: snapshot's storage)
        called: list[Volume] = []
        rejected: list[MemberSnapshot] = []
        memory_state = None
        suspended = False
        try:
            if memory:
                suspended = bool(self._call("vm-suspend", self.hook.snaptree_vm_suspend,
                                            group=group, ctx=ctx))
                if not suspended:
                    raise NotSupported(
                        f"no plugin can pause the VM of group {group_name!r} "
                        f"(QMP socket {group.qmp_socket})")
                memory_state = self._call("memory-save", self.hook.snaptree_memory_save,
                                          group=group, ctx=ctx)
                if memory_state is None:
                    raise NotSupported(f"no plugin can save VM memory for group {group_name!r}")
                with self.catalog.write("create-memory") as db:
                    self.catalog.set_memory(snapshot_id, memory_state, db)
            total = len(group.volumes)
            unwritten: list[MemberSnapshot] = []
            for index, (backend, volumes) in enumerate(batches):
                called.extend(volumes)
                result = self._call(f"snapshot:{backend}", self.hook.snaptree_snapshot,
                                    backend=backend, volumes=volumes, ctx=ctx)
                members, wrong, problem = sort_members(self.plugins, backend, volumes, result, ctx)
                made.extend(members)  # the right ones are undone through the plugin
                if problem is not None:
                    rejected.extend(m for m in wrong if isinstance(m, MemberSnapshot))
                    raise PluginError(problem)
                if index == len(batches) - 1:
                    unwritten = members  # the commit below writes them
                else:
                    # No fsync of its own: ``recover`` finds half-made
                    # members through the backends' listings, and the
                    # commit's fsync makes these rows durable with it.
                    with self.catalog.write("create-members", durable=False) as db:
                        self.catalog.add_members(members, db)
                ctx.progress(len(made), total, f"snapshot {name}")
            if suspended:
                self._call("vm-resume", self.hook.snaptree_vm_resume, group=group, ctx=ctx)
                suspended = False
            span.end()  # plugins close their connections before the outcome is recorded
            with self.catalog.write("create-commit") as db:
                self.catalog.add_members(unwritten, db)
                self.catalog.set_state(snapshot_id, SnapshotState.COMPLETE, db)
                self.catalog.set_current(group_name, snapshot_id, db)
                self.catalog.journal_finish(op_id, "done", db)
        except BaseException as err:
            undo_errors = self._undo_create(group, ctx, made, memory_state)
            removed: list[str] = []
            if called and not undo_errors:
                # A backend call may have made storage it never returned (an
                # interrupt cut it short, it raised halfway, it returned
                # nothing or wrong members): find what carries the create's
                # id as recover does.
                undo_errors = self._undo_unreturned(
                    group, ctx, made, called if isinstance(err, Exception) else group.volumes,
                    removed)
            if suspended:
                try:
                    self.hook.snaptree_vm_resume(group=group, ctx=ctx)
                except Exception as resume_err:  # keep the first error
                    undo_errors.append(f"resume: {resume_err}")
            span.end(err)
            message = str(err) or type(err).__name__
            if undo_errors:
                message += "; undo incomplete (run 'snaptree recover'): " + "; ".join(undo_errors)
            elif called and isinstance(err, PluginError):
                message += "; what it made for this snapshot was removed"
            left = sorted({m.ref for m in rejected if isinstance(m.ref, str)} - set(removed))
            if left:
                message += ("; left as they are, as they may be another snapshot's: "
                            + ", ".join(left))
            with self.catalog.write("create-failed") as db:
                if undo_errors:
                    self.catalog.journal_update(op_id, {"name": name, "undo_failed": True}, db)
                else:
                    self.catalog.remove_snapshot_row(snapshot_id, db)
                    self.catalog.journal_finish(op_id, "failed", db, error=message)
            if isinstance(err, SnaptreeError):
                err.message = message
            raise
        return made, memory_state

    def _undo_create(self, group: Group, ctx: OpContext, made: list[MemberSnapshot],
                     memory_state) -> list[str]:
        errors: list[str] = []
        for member in reversed(made):
            try:
                self._call(f"undo:{member.backend}", self.hook.snaptree_delete,
                           backend=member.backend, members=[member], ctx=ctx)
            except Exception as err:
                errors.append(f"{member.backend}:{member.locator}: {err}")
        if memory_state is not None:
            try:
                self.hook.snaptree_memory_delete(group=group, memory=memory_state, ctx=ctx)
            except Exception as err:
                errors.append(f"memory: {err}")
        return errors

    def _undo_unreturned(self, group: Group, ctx: OpContext, made: list[MemberSnapshot],
                         volumes: Sequence[Volume], removed: list[str]) -> list[str]:
        """Delete members carrying the create's id on ``volumes`` that no
        backend call returned (their refs go to ``removed``)."""
        returned = {(m.volume.spec, m.ref) for m in made}
        errors: list[str] = []
        for volume in dict.fromkeys(volumes):
            try:
                listed = self.hook.snaptree_list(backend=volume.backend, volume=volume) or ()
                left = [m for m in listed if isinstance(m, MemberSnapshot)
                        and m.snapshot_id == ctx.snapshot_id
                        and (volume.spec, m.ref) not in returned]
                if left:
                    self.hook.snaptree_delete(backend=volume.backend, members=left, ctx=ctx)
                    removed.extend(m.ref for m in left)
            except Exception as err:
                errors.append(f"{volume.spec}: {err}")
        return errors

    # -- revert ---------------------------------------------------------------

    def revert(self, group_name: str, name: str, *, disks_only: bool = False,
               options: dict[str, Any] | None = None) -> Snapshot:
        self.warnings = []
        self.group(group_name)  # no lock file for a group that does not exist
        with self.locked(group_name, "revert"):
            group = self.group(group_name)
            group_name = group.name  # the catalog's spelling of it
            snap = self.snapshot(group_name, name)
            if snap.state is not SnapshotState.COMPLETE:
                raise Conflict(f"snapshot {name!r} is {snap.state.value}, not complete; "
                               "run 'snaptree recover'")
            invalid = [m for m in snap.members if not m.valid]
            if invalid:
                raise NotSupported(
                    f"snapshot {name!r} cannot be reverted to: member {invalid[0].backend}:"
                    f"{invalid[0].locator} is invalid")
            options = dict(options or {})
            options["memory"] = snap.memory is not None and not disks_only
            options["disks_only"] = disks_only
            ctx = self.context(group, snap.snapshot_id, name, options)
            ctx.scratch["snapshot"] = snap
            members_by_spec = {m.volume.spec: m for m in snap.members}
            # volumes added to the group after the snapshot was taken
            newer = [v.spec for v in group.volumes if v.spec not in members_by_spec]
            lost = [spec for spec in newer if not group.predates(snap.created, spec)]
            if lost:
                raise NotSupported(f"snapshot {name!r} has no member for {lost[0]}")
            if not snap.members:  # every volume it had left with 'group remove --forget-members'
                raise NotSupported(
                    f"snapshot {name!r} has no member left on any volume of group {group_name!r}: "
                    "reverting to it would change nothing; delete it")
            if newer and options["memory"]:
                raise NotSupported(
                    f"snapshot {name!r} holds VM memory from before volume {newer[0]} joined the "
                    "group; 'revert --disks-only' brings back only the disks")
            reverted = [v for v in group.volumes if v.spec in members_by_spec]
            batches = batches_for(self.plugins, reverted)
            self._refuse_undeclared_revert(group_name, snap, reverted)
            self._prepare("revert", batches, ctx, members=list(snap.members))

            with self._operation(group, "revert", ctx) as span:
                previous = self.catalog.current_id(group_name)
                with self.catalog.write("revert-begin") as db:
                    op_id = self.catalog.journal_begin(
                        group_name, "revert", snap.snapshot_id,
                        {"previous": previous, "disks_only": disks_only}, db)
                done: list[str] = []
                in_flight: list[str] = []  # the batch a backend is reverting
                suspended = False
                try:
                    if snap.memory is not None or group.qmp_socket:
                        # every disk, of any backend, must stand still while the VM goes
                        # back; a plugin that must restart the VM does it on resume
                        ctx.scratch["vm_hooks"] = True
                        suspended = bool(self._call("vm-suspend", self.hook.snaptree_vm_suspend,
                                                    group=group, ctx=ctx))
                    for backend, volumes in batches:
                        members = [members_by_spec[v.spec] for v in volumes]
                        in_flight = [v.spec for v in volumes]
                        self._call(f"revert:{backend}", self.hook.snaptree_revert,
                                   backend=backend, members=members, ctx=ctx)
                        in_flight = []
                        done.extend(v.spec for v in volumes)
                        ctx.progress(len(done), len(reverted), f"revert {name}")
                    if options["memory"]:
                        restored = self._call("memory-restore", self.hook.snaptree_memory_restore,
                                              group=group, snapshot=snap, ctx=ctx)
                        if not restored:
                            raise NotSupported(
                                f"no plugin can restore VM memory for group {group_name!r}")
                    if suspended:
                        self._call("vm-resume", self.hook.snaptree_vm_resume, group=group, ctx=ctx)
                        suspended = False
                    span.end()
                    with self.catalog.write("revert-commit") as db:
                        self.catalog.set_current(group_name, snap.snapshot_id, db)
                        self.catalog.journal_finish(op_id, "done", db)
                    self.warnings.extend(f"volume {spec} joined the group after snapshot {name!r}: "
                                         "left as it is" for spec in newer)
                except BaseException as err:
                    if not isinstance(err, Exception):
                        # Ctrl-C, SystemExit: the disks may stand between two
                        # snapshots, and only finishing the revert puts them at
                        # one.  The entry stays open, as a crash leaves it, for
                        # 'recover' (or the next operation's recover-first) to
                        # roll forward; a paused VM stays paused until then.
                        span.end(err)
                        raise
                    if suspended:
                        try:
                            self.hook.snaptree_vm_resume(group=group, ctx=ctx)
                        except Exception:
                            pass  # the revert error is the one to report
                    span.end(err)
                    message = str(err) or type(err).__name__
                    # a backend given several volumes at once may have
                    # reverted some of them before it failed
                    maybe = in_flight if len(in_flight) > 1 else []
                    if done or maybe:
                        # Some volumes are at the snapshot, the others not:
                        # the entry stays open, as after a crash, so 'check'
                        # reports it, 'recover' (or the next operation's
                        # recover-first) rolls it forward, and while that
                        # fails creates and reverts are refused.
                        told = ([f"already reverted: {', '.join(done)}"] if done else []) + (
                            [f"maybe reverted: {', '.join(maybe)}"] if maybe else [])
                        message += (f" ({'; '.join(told)}; the volumes are "
                                    "not all at one snapshot until the revert is finished: "
                                    f"'snaptree recover {shlex.quote(group_name)}', or the next "
                                    "operation on the group, finishes it)")
                        with self.catalog.write("revert-failed") as db:
                            self.catalog.journal_update(
                                op_id, {"previous": previous, "disks_only": disks_only,
                                        "error": message}, db)
                    else:
                        with self.catalog.write("revert-failed") as db:
                            self.catalog.journal_finish(op_id, "failed", db, error=message)
                    if isinstance(err, SnaptreeError):
                        err.message = message
                    raise
            return self.catalog.get_snapshot_by_id(snap.snapshot_id)

    def _refuse_undeclared_revert(self, group_name: str, snap: Snapshot,
                                  volumes: Sequence[Volume]) -> None:
        """:class:`NotSupported` when a backend whose capabilities do not
        declare ``revert_to_any`` would be asked to revert a volume to other
        than its newest snapshot (nothing is journaled yet)."""
        snaps = None
        for volume in volumes:
            info = self.plugins.backend(volume.backend)
            if info.capabilities.revert_to_any:
                continue
            if snaps is None:
                snaps = [s for s in self.catalog.list_snapshots(group_name)
                         if s.state is SnapshotState.COMPLETE]
            holding = [s for s in snaps if any(m.volume.spec == volume.spec for m in s.members)]
            newest = max(holding, key=lambda s: s.created) if holding else None
            if newest is not None and newest.snapshot_id != snap.snapshot_id:
                raise NotSupported(
                    f"backend {volume.backend!r} reverts only to the newest snapshot of "
                    f"{volume.spec} ({newest.name!r}), not to {snap.name!r}: it does not "
                    "declare revert_to_any")

    # -- delete ---------------------------------------------------------------

    def descendants(self, snapshot_id: str) -> list[str]:
        """Ids of the subtree below ``snapshot_id``, deepest first."""
        out: list[str] = []

        def walk(sid: str) -> None:
            for child in self.catalog.children_ids(sid):
                walk(child)
                out.append(child)

        walk(snapshot_id)
        return out

    def delete(self, group_name: str, name: str, *, children: bool = False,
               options: dict[str, Any] | None = None, snapshot_id: str | None = None,
               keep_current: bool = False) -> list[str]:
        """Delete a snapshot (and its subtree with ``children``); returns names deleted.

        Decided under the group's lock, whatever happened since the caller
        looked: with ``snapshot_id`` the snapshot is the one with that id,
        under whatever name it has by then (``name`` only says what the
        caller called it; gone: :class:`SnapshotNotFound`); with
        ``keep_current`` nothing is deleted if it is the group's current
        one or the target of a revert left unfinished (returns ``[]``).
        """
        self.warnings = []
        self.group(group_name)  # no lock file for a group that does not exist
        before = (self.catalog.get_snapshot(group_name, name) if snapshot_id is None
                  else self.catalog.get_snapshot_by_id(snapshot_id))
        with self.locked(group_name, "delete"):
            group = self.group(group_name)
            group_name = group.name  # the catalog's spelling of it
            if (before is not None and before.state is SnapshotState.DELETING
                    and self.catalog.get_snapshot_by_id(before.snapshot_id) is None):
                return [before.name]  # a delete that had failed, finished as the lock was taken
            if snapshot_id is None:
                snap = self.snapshot(group_name, name)
            else:
                snap = self.catalog.get_snapshot_by_id(snapshot_id)
                if snap is None or snap.group != group_name:
                    raise SnapshotNotFound(f"group {group_name!r} has no snapshot {name!r} "
                                           f"(id {snapshot_id}) any more")
            reverting = self.unfinished_revert_targets(group_name)
            if keep_current and (group.current_id == snap.snapshot_id
                                 or snap.snapshot_id in reverting):
                return []
            name = snap.name  # its name now, for the messages (a rename may have come between)
            ids = (self.descendants(snap.snapshot_id) if children else []) + [snap.snapshot_id]
            for sid in reverting & set(ids):
                target = self.catalog.get_snapshot_by_id(sid)
                self.warnings.append(
                    f"deleting {target.name if target else sid!r} abandons the unfinished revert "
                    f"to it: the volumes of group {group_name!r} may stay partly reverted (some "
                    "at that snapshot, the others as before); check their contents")
            snaps = [self.catalog.get_snapshot_by_id(i) for i in ids]
            for s in snaps:
                ctx = self.context(group, s.snapshot_id, s.name, dict(options or {}))
                ctx.scratch["deleting"] = frozenset(ids)
                held = {m.volume.spec for m in s.members}  # a volume added later has none
                self._prepare("delete", batches_for(
                    self.plugins, [v for v in group.volumes if v.spec in held]), ctx,
                    members=list(s.members))
            with self.catalog.write("delete-begin") as db:
                op_id = self.catalog.journal_begin(group_name, "delete", snap.snapshot_id,
                                                   {"ids": ids}, db)
                for sid in ids:
                    self.catalog.set_state(sid, SnapshotState.DELETING, db)
            try:
                for index, sid in enumerate(ids):
                    self.delete_one(group, sid, options)
                    ctx.progress(index + 1, len(ids), f"delete {name}")
                with self.catalog.write("delete-commit") as db:
                    self.catalog.journal_finish(op_id, "done", db)
            except BaseException as err:
                # the entry stays open whatever stopped the delete (an
                # interrupt too): 'recover' rolls it forward
                with self.catalog.write("delete-failed") as db:
                    self.catalog.journal_update(
                        op_id, {"ids": ids, "error": str(err) or type(err).__name__}, db)
                if isinstance(err, SnaptreeError):
                    err.message = (f"{err.one_line()} (snapshot {name!r} stays 'deleting': "
                                   "'snaptree recover', or the next operation on the group, "
                                   "finishes the delete)")
                raise
        return [s.name for s in snaps]

    def unfinished_revert_targets(self, group_name: str) -> set[str]:
        """Ids of the snapshots a revert left unfinished (open in the journal)
        is going to: ``recover`` needs each to finish that revert."""
        return {entry["snapshot_id"] for entry in self.catalog.journal_open(group_name)
                if entry["operation"] == "revert" and entry["snapshot_id"]}

    def delete_one(self, group: Group, snapshot_id: str, options: dict[str, Any] | None = None) -> None:
        """Remove one snapshot's members and its row; idempotent (used by recover)."""
        snap = self.catalog.get_snapshot_by_id(snapshot_id)
        if snap is None:
            return
        ctx = self.context(group, snap.snapshot_id, snap.name, dict(options or {}))
        ctx.scratch["snapshot"] = snap
        members_by_spec = {m.volume.spec: m for m in snap.members}
        with self._operation(group, "delete", ctx):
            for backend, volumes in batches_for(self.plugins, group.volumes):
                members = [members_by_spec[v.spec] for v in volumes if v.spec in members_by_spec]
                if not members:
                    continue
                self._call(f"delete:{backend}", self.hook.snaptree_delete,
                           backend=backend, members=members, ctx=ctx)
                with self.catalog.write("delete-members") as db:
                    for m in members:
                        db.execute("DELETE FROM members WHERE snapshot_id=? AND spec=?",
                                   (m.snapshot_id, m.volume.spec))
            if snap.memory is not None:
                self._call("memory-delete", self.hook.snaptree_memory_delete,
                           group=group, memory=snap.memory, ctx=ctx)
        with self.catalog.write("delete-row") as db:
            parent = self.catalog.parent_id(snapshot_id)
            self.catalog.reparent(snapshot_id, parent, db)
            if self.catalog.current_id(group.name) == snapshot_id:
                self.catalog.set_current(group.name, parent, db)
            self.catalog.remove_snapshot_row(snapshot_id, db)


