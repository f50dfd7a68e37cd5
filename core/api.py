"""The Python API a toolstack embeds; the CLI is a thin layer over it."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import sqlite3
import stat
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from .audit import AuditLog
from .boundary import checked_claims
from .catalog import Catalog
from .coordinator import Coordinator
from .footprints import Places, footprint_of, refuse_overlaps
from .locking import group_lock
from .errors import (Busy, Conflict, InvalidInput, NotFound, PermissionDenied, PluginError, SnapshotNotFound,
                     SnaptreeError, StateError, VolumeNotFound)
from .model import BackendInfo, Group, Snapshot, SnapshotState, SpaceUsage, Volume
from .names import check_abs_path, check_description, check_name, split_spec
from .plugins import PluginSet
from .pruning import prune_order
from .recovery import DriftReport, RecoveryReport, check, needs_recovery, recover, recover_held
from .statedir import default_state_dir, ensure_state_dir
from . import vm

__all__ = ["Snaptree"]

CATALOG_FILE = "catalog.sqlite"
#: the lock ``group create`` and ``group add`` hold while they check and
#: register volumes (NUL cannot occur in a group name, so no group has it)
REGISTRY_LOCK = "\x00volume-registry"


#: :meth:`Snaptree.set_group`: leave the QMP socket as it is
KEEP = object()


def _checked_options(options: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(options or {})
    for key, value in out.items():
        if not isinstance(key, str) or not key or not isinstance(value, (str, int, float, bool)):
            raise InvalidInput(f"option {key!r} must map a name to a plain value")
    return out


def _serialized(cls):
    """Every public method of ``cls`` holds the instance's lock: threads that
    share one :class:`Snaptree` take turns (its catalog connection and the
    operation in progress are not for two threads at once)."""
    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(value):
            setattr(cls, name, _holding_lock(value))
    return cls


def _holding_lock(method):
    @functools.wraps(method)
    def serialized(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return serialized


@_serialized
class Snaptree:
    """One state directory, one plugin set: every snapshot operation.

    Threads may share one: its calls run one at a time (a call waits for
    another thread's to end), and :attr:`warnings` are each thread's own.
    For operations in parallel, give each thread its own Snaptree.

    :param state_dir: where the catalog and locks live (default:
        ``$SNAPTREE_STATE_DIR``, ``/var/lib/snaptree`` as root, else XDG state).
    :param plugins: extra plugin objects to register (audit logs, test faults).
    :param load_entrypoints: load backends from the ``snaptree`` entry points.
    :param lock_timeout: seconds to wait for a busy group before raising Busy.
    :param progress: ``callable(done, total, label)`` for long work.
    :param auto_recover: run :meth:`recover` on a group before mutating it.
    :param audit: keep ``STATE_DIR/audit.jsonl``, one line per backend call.
    """

    def __init__(self, state_dir: str | None = None, *, plugins: Iterable[object] = (),
                 load_entrypoints: bool = True, lock_timeout: float = 30.0,
                 progress: Callable[..., None] | None = None, auto_recover: bool = True,
                 audit: bool = True):
        self._lock = threading.RLock()
        # "" is a path the user gave, and a wrong one: not "use the default"
        self.state_dir = ensure_state_dir(default_state_dir() if state_dir is None else state_dir)
        self.plugins = PluginSet(plugins, load_entrypoints=load_entrypoints)
        if audit:
            self.plugins.register(AuditLog(os.path.join(self.state_dir, "audit.jsonl")), "audit")
        self.catalog = Catalog(os.path.join(self.state_dir, CATALOG_FILE))
        self.coordinator = Coordinator(self.catalog, self.plugins, self.state_dir,
                                       lock_timeout=lock_timeout, progress=progress)
        self.coordinator.on_locked = self._finish_interrupted
        self.auto_recover = auto_recover

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Snaptree":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- backends -------------------------------------------------------------

    def backends(self) -> list[dict[str, Any]]:
        """Installed backends with capabilities, missing tools and broken plugins."""
        out = []
        for name, info in sorted(self.plugins.backends.items()):
            missing = [t for t in info.required_tools if shutil.which(t) is None]
            out.append({"name": name, "description": info.description, "provider": info.provider,
                        "capabilities": info.capabilities.as_dict(), "missing_tools": missing})
        for name, reason in sorted(self.plugins.broken.items()):
            out.append({"name": name, "broken": reason})
        return out

    def backend_info(self, name: str) -> BackendInfo:
        return self.plugins.backend(name)

    def claim(self, spec: str) -> Volume:
        """Resolve ``BACKEND:LOCATOR`` to a volume claimed by exactly one plugin."""
        backend, locator = split_spec(spec)
        info = self.plugins.backend(backend)
        if info.capabilities.needs_root and os.geteuid() != 0:
            raise PermissionDenied(
                f"backend {backend!r} needs root (it uses {', '.join(info.required_tools) or 'kernel ioctls'}); "
                "run snaptree as root")
        claims = checked_claims(self.plugins, backend, locator,
                                self.plugins.hook.snaptree_claim_volume(backend=backend,
                                                                        locator=locator))
        if not claims:
            raise PluginError(f"no plugin claims volume {spec!r}")
        if len(claims) > 1:
            raise PluginError(f"volume {spec!r} is claimed by {len(claims)} plugins")
        return claims[0]

    # -- groups ---------------------------------------------------------------

    def create_group(self, name: str, volume_specs: Sequence[str], *, qmp_socket: str | None = None,
                     options: dict[str, Any] | None = None) -> Group:
        """Register a group of volumes, snapshotted together from now on.

        Refused (:class:`~snaptree.errors.Conflict`) for a volume already in
        a group or whose storage overlaps a registered volume's, or another
        one's of ``volume_specs`` (:func:`snaptree.footprints.refuse_overlaps`).
        """
        check_name(name, "group name")
        if not volume_specs:
            raise InvalidInput("a group needs at least one volume")
        volumes = self._claim_all(volume_specs)
        if qmp_socket is not None:
            qmp_socket = check_abs_path(qmp_socket, "QMP socket")
        options = _checked_options(options)
        if self.catalog.get_group(name) is not None:
            raise Conflict(f"group {name!r} already exists")
        group = Group(name=name, volumes=tuple(volumes), qmp_socket=qmp_socket,
                      options=options, created=time.time())
        with self._registering():
            refuse_overlaps(self.catalog, self.plugins.hook, name, volumes)
            try:
                self.catalog.add_group(group)
            except Exception as err:
                if isinstance(err.__cause__, sqlite3.IntegrityError) or isinstance(err, sqlite3.IntegrityError):
                    raise Conflict(f"group {name!r} or one of its volumes is already registered") from err
                raise
        return self.catalog.get_group(name)

    def _claim_all(self, volume_specs: Sequence[str]) -> list[Volume]:
        """Claim each spec; refuse one listed twice or holding snaptree's state."""
        volumes: list[Volume] = []
        for spec in volume_specs:
            volume = self.claim(spec)
            self._refuse_own_state(volume)
            if volume in volumes:
                raise InvalidInput(f"volume {volume.spec} is listed twice")
            volumes.append(volume)
        return volumes

    @contextlib.contextmanager
    def _registering(self) -> Iterator[None]:
        """Hold the lock under which volumes are checked and registered: two
        callers adding overlapping volumes at once cannot both pass
        :func:`~snaptree.footprints.refuse_overlaps`."""
        held = contextlib.ExitStack()
        try:
            held.enter_context(group_lock(self.state_dir, REGISTRY_LOCK,
                                          self.coordinator.lock_timeout))
        except Busy:
            raise Busy("another snaptree is adding volumes to a group (it holds the volume "
                       "registry's lock); try again") from None
        with held:
            yield

    def add_volumes(self, name: str, volume_specs: Sequence[str]) -> Group:
        """Add volumes to a group (a disk the VM got).

        Snapshots taken before have no member on them: reverting to one
        leaves these volumes as they are (and says so), and refuses to
        bring back VM memory that never knew the disk.  Refused, as at
        :meth:`create_group`, for a volume in a group or overlapping one.
        """
        if not volume_specs:
            raise InvalidInput("name at least one volume to add")
        self.group(name)
        volumes = self._claim_all(volume_specs)
        with self.coordinator.locked(name, "group-add"), self._registering():
            self.group(name)
            refuse_overlaps(self.catalog, self.plugins.hook, name, volumes)
            try:
                self.catalog.add_volumes(name, volumes)
            except sqlite3.IntegrityError as err:  # claimed by another group meanwhile
                raise Conflict(f"one of {', '.join(v.spec for v in volumes)} joined "
                               "another group meanwhile") from err
        return self.group(name)

    def remove_volumes(self, name: str, volume_specs: Sequence[str], *,
                       forget_members: bool = False) -> Group:
        """Take volumes out of a group; their data stays as it is.

        Refused while a snapshot holds a member on one of them (delete those
        snapshots first), unless ``forget_members``: then the catalog drops
        those members and leaves their storage where it is, each named in
        :attr:`warnings` (the way out for a disk that is gone), as is each
        snapshot left with no member at all (revert refuses it, ``check``
        reports it, delete removes it).  Refused
        too while an interrupted operation is unfinished, and for the
        group's last volume.
        """
        if not volume_specs:
            raise InvalidInput("name at least one volume to remove")
        self.group(name)
        with self.coordinator.locked(name, "group-remove"):
            group = self.group(name)
            specs = [self._member_spec(group, spec) for spec in volume_specs]
            if len(set(specs)) != len(specs):
                raise InvalidInput("a volume is listed twice")
            if len(specs) >= len(group.volumes):
                raise InvalidInput(f"group {name!r} would have no volume left; "
                                   "'snaptree group delete' forgets a group")
            snaps = self.catalog.list_snapshots(name)
            unfinished = [s for s in snaps if s.state is not SnapshotState.COMPLETE]
            if unfinished:  # its members may not be in the catalog yet
                raise StateError(f"snapshot {unfinished[0].name!r} of group {name!r} is "
                                 f"{unfinished[0].state.value}; run 'snaptree recover {name}' first")
            left: list[str] = []
            emptied = [s.name for s in snaps
                       if s.members and all(m.volume.spec in specs for m in s.members)]
            for spec in specs:
                held = self.catalog.members_on(name, spec)
                if held and not forget_members:
                    names = [n for n, _ in held]
                    shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
                    raise Conflict(f"volume {spec} has members in {len(names)} snapshot(s) of group "
                                   f"{name!r} ({shown}); delete those snapshots first, or pass "
                                   "--forget-members to leave their storage as it is")
                if held and self._still_there(spec):
                    raise Conflict(f"volume {spec} is still there; --forget-members is for a disk "
                                   "that is gone (its snapshots' storage may still back it): "
                                   "delete those snapshots instead")
                left += [f"{spec}: snaptree no longer tracks what snapshot {n!r} kept ({ref}); "
                         "check before removing anything" for n, ref in held]
            self.catalog.remove_volumes(name, specs)
            left += [f"snapshot {n!r} has no member left (taken before the group's other volumes "
                     "joined): it holds nothing to revert to; delete it" for n in emptied]
            self.coordinator.warnings.extend(left)
        return self.group(name)

    def _still_there(self, spec: str) -> bool:
        """True when the backend still finds the volume ``spec`` names."""
        try:
            self.claim(spec)
        except NotFound:
            return False
        except SnaptreeError:
            return True  # there, but refused for another reason
        return True

    def _member_spec(self, group: Group, spec: str) -> str:
        """The spec under which ``group`` holds the volume ``spec`` names."""
        backend, locator = split_spec(spec)
        specs = {v.spec for v in group.volumes}
        if f"{backend}:{locator}" in specs:
            return f"{backend}:{locator}"
        try:
            claimed = self.claim(spec).spec  # the backend's spelling of the locator
        except SnaptreeError:
            claimed = None
        if claimed in specs:
            return claimed
        raise VolumeNotFound(f"volume {spec} is not in group {group.name!r}")

    def _refuse_own_state(self, volume: Volume) -> None:
        """A volume must not hold snaptree's own state: reverting it would
        roll the catalog back and lose every snapshot taken since."""
        path = (self.plugins.hook.snaptree_volume_path(backend=volume.backend, volume=volume)
                or volume.locator)
        try:
            found = os.stat(path)
        except (OSError, ValueError):
            return  # not a local path: the backend vouched for the volume
        state = os.path.realpath(self.state_dir)
        if stat.S_ISBLK(found.st_mode):
            holds = found.st_rdev == os.stat(state).st_dev  # the state's filesystem is on it
        else:
            real = os.path.realpath(path)
            holds = os.path.commonpath([real, state]) in (real, state) or any(
                (found.st_dev, found.st_ino) == (own.st_dev, own.st_ino)
                for own in self._state_files())
            if not holds:  # by inode: the state reached through a bind mount
                footprint = footprint_of(self.plugins.hook, volume)
                holds = bool(footprint) and Places().overlap(footprint, [state]) is not None
        if holds:
            raise InvalidInput(f"volume {volume.spec} holds snaptree's own state ({state}); "
                               "a revert would roll the catalog back")

    def _state_files(self) -> Iterator[os.stat_result]:
        for name in os.listdir(self.state_dir):
            try:
                yield os.stat(os.path.join(self.state_dir, name))
            except OSError:
                continue

    def list_groups(self) -> list[Group]:
        return [self.catalog.get_group(n) for n in self.catalog.group_names()]

    def group(self, name: str) -> Group:
        return self.coordinator.group(name)

    def set_group(self, name: str, *, qmp_socket: str | None | object = KEEP,
                  options: dict[str, Any] | None = None, unset: Sequence[str] = ()) -> Group:
        """Change a group's QMP socket (``None`` removes it) or options.

        A toolstack gives a VM a new monitor socket at every start (Xen's
        ``qmp-libxl-<domid>``, libvirt's per-domain-id folder): the group
        follows it here and keeps its snapshots.  ``unset`` names options to
        remove.  Volumes are not changed here.
        """
        changes = _checked_options(options)
        if qmp_socket is not KEEP and qmp_socket is not None:
            qmp_socket = check_abs_path(qmp_socket, "QMP socket")  # type: ignore[arg-type]
        if qmp_socket is KEEP and not changes and not unset:
            raise InvalidInput("nothing to change: give a QMP socket, --no-qmp, -o KEY=VALUE "
                               "or --unset KEY")
        self.group(name)
        # Under the lock: no operation reads the group halfway through the
        # change.  What an interrupted operation left is not recovered first:
        # the next operation does that through the socket set here (the old
        # one may lead nowhere, and recovering offline what a running VM
        # holds would fail or, worse, act on stale state).
        with self.coordinator.locked(name, "group-set"):
            group = self.group(name)
            merged = dict(group.options)
            for key in unset:
                if key not in merged:
                    raise InvalidInput(f"group {name!r} has no option {key!r}")
                if key in changes:
                    raise InvalidInput(f"option {key!r} is both set and unset")
                del merged[key]
            merged.update(changes)
            socket = group.qmp_socket if qmp_socket is KEEP else qmp_socket
            self.catalog.update_group(name, socket, merged)  # type: ignore[arg-type]
        return self.group(name)

    def delete_group(self, name: str, *, with_snapshots: bool = False) -> None:
        """Forget a group; refuses while it has snapshots unless ``with_snapshots``."""
        self.group(name)
        while True:
            # decided under the lock: a create running now cannot slip in
            # between the count and the delete
            with self.coordinator.locked(name, "group-delete"):
                snaps = self.catalog.list_snapshots(name)
                if snaps and not with_snapshots:
                    raise Conflict(f"group {name!r} has {len(snaps)} snapshot(s); delete them "
                                   "first or pass --with-snapshots")
                if not snaps:
                    self.catalog.delete_group(name)
                    return
            for root in [s for s in snaps if s.parent is None]:
                try:
                    self.coordinator.delete(name, root.name, children=True)
                except SnapshotNotFound:
                    pass  # deleted meanwhile by someone else

    # -- snapshots ------------------------------------------------------------

    def _finish_interrupted(self, group: str, operation: str) -> None:
        """What an interrupted operation left open on ``group`` is finished
        (or undone) before the next one reads it: the caller holds the lock,
        so no live process is working there.  A create, revert or VM start
        on a group recovery cannot bring back to a known state is refused;
        deletes go ahead (removing the snapshot a stuck revert aimed at is
        the way out), with what was left said as a warning."""
        if operation == "group-set":
            return  # recover through a socket that may be dead is what group set mends
        # a volume change would leave what the interrupted operation made on
        # a volume out of recover's sight, or add one it never knew
        blocks = operation in ("create", "revert", "start", "group-add", "group-remove")
        if not self.auto_recover:
            if blocks and self.catalog.has_open_journal(group):
                raise StateError(f"group {group!r} has an unfinished operation; "
                                 f"run 'snaptree recover {group}' first")
            return
        if not needs_recovery(self.catalog, group):
            return
        report = recover_held(self.coordinator, group)
        self.coordinator.warnings.extend(f"recovered first: {line}" for line in report.actions)
        if not report.errors:
            return
        if blocks:
            raise StateError(f"group {group!r} has an unfinished operation that recover could "
                             f"not finish ({report.errors[0]}); fix that and run 'snaptree "
                             f"recover {group}', or delete the snapshot it cannot restore")
        self.coordinator.warnings.extend(f"left unfinished: {e}" for e in report.errors)

    def create(self, group: str, name: str | None = None, *, description: str = "",
               memory: bool = False, options: dict[str, Any] | None = None) -> Snapshot:
        """Snapshot every volume of ``group`` as one point; returns the snapshot."""
        return self.coordinator.create(group, name, description=description, memory=memory,
                                       options=options)

    @property
    def warnings(self) -> list[str]:
        """What the calling thread's last operation on a group warned about
        (an LVM merge deferred until the volume is closed, what was recovered
        first, the storage 'group remove --forget-members' leaves untracked)."""
        return list(self.coordinator.warnings)

    def revert(self, group: str, name: str, *, disks_only: bool = False,
               options: dict[str, Any] | None = None) -> Snapshot:
        """Bring every volume (and VM memory, if saved) back to snapshot ``name``.

        With ``disks_only`` the memory a snapshot holds is left out: only the
        volumes go back (a running VM then boots afresh on them).
        """
        return self.coordinator.revert(group, name, disks_only=disks_only, options=options)

    def start_vm(self, group: str, *, paused: bool = False) -> dict[str, str]:
        """Start ``group``'s VM (``virsh start``) on the files its volumes are at now.

        A plugin must know how (a launch recipe, ``-o qemu.launch=FILE``, or a
        toolstack plugin).  Returns volume locator -> file the VM opened.
        """
        self.group(group)
        with self.coordinator.locked(group, "start"):
            g = self.group(group)
            ctx = self.coordinator.context(g, "", "", {})
            ctx.scratch["operation"] = "start"
            vm.start(self.plugins.hook, g, ctx)
            if not paused:
                self.plugins.hook.snaptree_vm_resume(group=g, ctx=ctx)
            return vm.current_images(self.plugins.hook, g)

    def delete(self, group: str, name: str, *, children: bool = False) -> list[str]:
        """Delete snapshot ``name`` (its subtree with ``children``); children are re-parented."""
        return self.coordinator.delete(group, name, children=children)

    def prune(self, group: str, keep: int, *, dry_run: bool = False) -> list[str]:
        """Delete all but the ``keep`` newest complete snapshots, never the current one
        (snapper's number cleanup), each as its own delete: newest first,
        and a snapshot never before one below it in the tree (see
        :mod:`snaptree.pruning`).

        Returns the names deleted, in that order (with ``dry_run``: that
        would be).  Each delete is decided again under the group's lock by
        snapshot id: a rename meanwhile does not save a snapshot, a revert
        to it does.  The target of a revert left unfinished stays too
        (``recover`` needs it to finish the revert).  A failed delete stops the pruning: what was deleted
        before stays deleted, and the error names them.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise InvalidInput(f"keep must be a whole number of 0 or more, not {keep!r}")
        doomed = prune_order(self.list(group), keep, self.group(group).current_id,
                             self.coordinator.unfinished_revert_targets(group))
        if dry_run:
            return [s.name for s in doomed]
        deleted: list[str] = []
        warnings: list[str] = []
        for index, snap in enumerate(doomed):
            try:
                gone = self.coordinator.delete(group, snap.name, snapshot_id=snap.snapshot_id,
                                               keep_current=True)
            except SnapshotNotFound:
                continue  # deleted meanwhile by someone else
            except SnaptreeError as err:
                if deleted:
                    err.message = (f"{err.one_line()} (pruning stopped; deleted before: "
                                   f"{', '.join(repr(n) for n in deleted)})")
                raise
            finally:
                warnings.extend(self.coordinator.warnings)
            deleted.extend(gone)
            if self.coordinator.progress is not None:
                self.coordinator.progress(index + 1, len(doomed), f"prune {group}")
        self.coordinator.warnings = warnings
        return deleted

    def list(self, group: str) -> list[Snapshot]:
        """Snapshots of ``group`` in creation order (complete ones and any unfinished)."""
        self.group(group)
        return self.catalog.list_snapshots(group)

    def tree(self, group: str) -> list[dict[str, Any]]:
        """The snapshot tree as nested dicts: ``{"name", "current", "children"}``."""
        snaps = self.list(group)
        current = self.catalog.get_group(group).current
        nodes = {s.name: {"name": s.name, "created": s.created, "description": s.description,
                          "current": s.name == current, "children": []} for s in snaps}
        roots = []
        for s in snaps:
            if s.parent and s.parent in nodes:
                nodes[s.parent]["children"].append(nodes[s.name])
            else:
                roots.append(nodes[s.name])
        return roots

    def edit(self, group: str, name: str, *, new_name: str | None = None,
             description: str | None = None) -> Snapshot:
        """Rename a snapshot or change its description (``virsh snapshot-edit``,
        ``snapper modify``); storage knows snapshots by id, so only the
        catalog changes."""
        if new_name is None and description is None:
            raise InvalidInput("nothing to change: give a new name or a description")
        if new_name is not None:
            new_name = check_name(new_name)  # its normal form
        if description is not None:
            check_description(description)
        self.group(group)
        with self.coordinator.locked(group, "edit"):
            snap = self.coordinator.snapshot(group, name)
            target = snap.name if new_name is None else new_name
            holder = self.catalog.get_snapshot(group, target) if target != snap.name else None
            if holder is not None and holder.snapshot_id != snap.snapshot_id:
                raise Conflict(f"group {group!r} already has a snapshot named {target!r}")
            self.catalog.edit_snapshot(snap.snapshot_id, target,
                                       snap.description if description is None else description)
            return self.coordinator.snapshot(group, target)

    def current(self, group: str) -> Snapshot | None:
        g = self.group(group)
        return self.catalog.get_snapshot(group, g.current) if g.current else None

    def info(self, group: str, name: str) -> Snapshot:
        return self.coordinator.snapshot(group, name)

    def parent(self, group: str, name: str) -> Snapshot | None:
        snap = self.info(group, name)
        return self.catalog.get_snapshot(group, snap.parent) if snap.parent else None

    def children(self, group: str, name: str) -> list[Snapshot]:
        snap = self.info(group, name)
        return [self.catalog.get_snapshot_by_id(i) for i in self.catalog.children_ids(snap.snapshot_id)]

    def space_used(self, group: str, name: str) -> dict[str, SpaceUsage]:
        snap = self.info(group, name)
        out = {}
        for m in snap.members:
            usage = self.plugins.hook.snaptree_space_used(backend=m.backend, member=m)
            out[m.volume.spec] = usage or SpaceUsage()
        return out

    # -- maintenance ----------------------------------------------------------

    def recover(self, group: str | None = None) -> RecoveryReport:
        """Finish or undo operations a crash interrupted; clean backend leftovers."""
        if group is not None:
            self.group(group)
        return recover(self.coordinator, group)

    def check(self, group: str) -> DriftReport:
        """Compare the catalog with what the backends hold."""
        return check(self.coordinator, group)

    def journal(self, group: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if group is not None:
            self.group(group)
        return [dict(e) for e in self.catalog.journal_tail(group, limit)]
