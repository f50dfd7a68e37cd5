"""Hook specifications: the contract between the coordinator and backends.

A backend is a plugin that implements :func:`snaptree_backends` to register
itself and the operation hooks below for the volumes it owns.  The operation
hooks are *firstresult*: every one receives the backend name first, and an
implementation returns ``None`` for a backend that is not its own so the call
moves on to the next plugin.  :class:`snaptree.backend.VolumeBackend` does that
dispatch for you; implementing the hooks by hand is equally supported.

Cross-cutting plugins (audit logs, timing, fsfreeze, locking) wrap the
operation hooks with ``@hookimpl(wrapper=True)``; see :mod:`snaptree.audit`.

Errors: raise subclasses of :class:`snaptree.errors.SnaptreeError`.  Wrap every
lower-layer exception once, at your I/O boundary (``snaptree.runner`` does it
for subprocesses).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .markers import hookspec
from .model import (
    BackendInfo,
    Group,
    MemberSnapshot,
    MemoryState,
    OpContext,
    Snapshot,
    SpaceUsage,
    Volume,
)

# -- registration ------------------------------------------------------------


@hookspec
def snaptree_backends() -> Sequence[BackendInfo]:
    """Register the backends this plugin provides.

    Return a list of :class:`snaptree.model.BackendInfo`, one per backend, with
    its name (the ``BACKEND`` in a ``BACKEND:LOCATOR`` volume spec) and its
    :class:`snaptree.model.Capabilities`.  The coordinator acts on three
    of them: only an ``atomic_batch`` backend gets several volumes in one
    :func:`snaptree_snapshot` or :func:`snaptree_revert` call; a backend
    without ``revert_to_any`` is asked to revert a volume only to the newest
    snapshot holding a member on it (any other revert is refused, exit 7,
    before anything is journaled); a ``needs_root`` backend's volumes are
    refused to a caller that is not root.  The others (``live``,
    ``internal``, ``external``, ``read_only``, ``memory_state``) describe
    the backend to users (``snaptree backends``): VM state goes through the
    ``snaptree_vm_*`` and ``snaptree_memory_*`` hooks, which the plugin that
    can reach the VM answers, and a backend that cannot snapshot a volume
    in use must refuse it in :func:`snaptree_prepare`.

    Two plugins registering the same name is an error naming both providers.

    :returns: a list of backend descriptions (may be empty).
    """


@hookspec
def snaptree_claim_volume(backend: str, locator: str) -> Volume | None:
    """Claim a volume given as ``BACKEND:LOCATOR``.

    Return a :class:`snaptree.model.Volume` with the locator normalised (an
    absolute, resolved path; ``vg/lv``) if ``backend`` is yours and the
    locator is well-formed; return ``None`` otherwise.  Raise
    :class:`~snaptree.errors.InvalidInput` for a malformed locator and
    :class:`~snaptree.errors.VolumeNotFound` when the volume does not exist.

    Exactly one plugin must claim a volume; the coordinator refuses a spec
    claimed by none or by several.

    :param backend: the backend name from the spec.
    :param locator: everything after the first ``:``, unvalidated user input.
    :returns: the claimed volume, or ``None``.
    """


# -- the operations (all firstresult, dispatched by backend name) -------------


@hookspec(firstresult=True)
def snaptree_prepare(
    backend: str, operation: str, volumes: Sequence[Volume], ctx: OpContext
) -> bool | None:
    """Check that ``operation`` can run on ``volumes``, without side effects.

    Called for every backend of a group before anything is changed, so that a
    failure here leaves nothing to undo.  For ``"snapshot"`` it runs under the
    group's lock, so what you check cannot change before the backends act.  Check that volumes exist and are not
    in use in a way you cannot handle, that tools are installed, that options
    in ``ctx.options`` are valid, and (for ``"revert"``/``"delete"``) that the
    members in ``ctx.scratch["members"]`` can be reverted to or removed.  A
    delete of a subtree prepares each of its snapshots in turn, children
    first; ``ctx.scratch["deleting"]`` holds the ids of every snapshot it
    removes, so a member may depend on one of those.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param operation: ``"snapshot"``, ``"revert"`` or ``"delete"``.
    :param volumes: the group's volumes that belong to ``backend``; for
        ``"revert"`` and ``"delete"`` only those the snapshot has a member on
        (a volume added to the group later has none).
    :param ctx: the operation's context.
    :returns: ``True`` when the checks passed; raise on failure.
    """


@hookspec
def snaptree_operation_begin(group: Group, operation: str, ctx: OpContext) -> None:
    """The group is locked and ``operation`` is about to be journaled.

    Open here what the operation's later hooks should share instead of each
    opening their own, such as a connection to the VM's monitor (the qcow2
    plugin keeps one QMP connection for a whole create, from pausing the VM
    to resuming it).  Keep it in ``ctx.scratch`` under a key with your
    plugin's prefix.

    Change nothing here: raising refuses the operation before anything is
    journaled.  Hooks must work without this call too, because
    ``snaptree recover`` calls the operation hooks on their own.

    Every plugin is called.  A delete of several snapshots calls it once per
    snapshot, with that snapshot's context.

    :param group: the group, read under its lock.
    :param operation: ``"snapshot"``, ``"revert"`` or ``"delete"``.
    :param ctx: the operation's context.
    """


@hookspec
def snaptree_operation_end(group: Group, operation: str, ctx: OpContext,
                           error: BaseException | None) -> None:
    """Close what :func:`snaptree_operation_begin` opened.

    Called once the backends' work is over (``error`` is ``None``) or has
    failed and been undone (``error`` is what failed), before the catalog
    records the outcome.  Called whenever ``snaptree_operation_begin`` was,
    even if that call raised for another plugin.  What you raise here is
    reported as a warning: the operation's outcome is already decided.

    Every plugin is called.

    :param group: the group.
    :param operation: as given to :func:`snaptree_operation_begin`.
    :param ctx: the operation's context.
    :param error: the exception that failed the operation, or ``None``.
    """


@hookspec(firstresult=True)
def snaptree_snapshot(
    backend: str, volumes: Sequence[Volume], ctx: OpContext
) -> Sequence[MemberSnapshot] | None:
    """Snapshot ``volumes`` and describe the member snapshots made.

    A backend whose capabilities declare ``atomic_batch`` receives every
    volume of the group it owns in one call and must snapshot all or none;
    other backends receive one volume per call.  Name storage objects with
    ``ctx.snapshot_id`` so that :func:`snaptree_list` can recognise them;
    never with ``ctx.snapshot_name``, which ``snaptree edit`` may change.

    If you raise, leave nothing behind for the volumes of this call; the
    coordinator undoes members made by earlier calls with
    :func:`snaptree_delete`.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param volumes: the volumes to snapshot, in group order.
    :param ctx: the operation's context (``ctx.options["memory"]`` is true
        when VM memory is being saved with this snapshot).
    :returns: one :class:`~snaptree.model.MemberSnapshot` per volume, in order.
    """


@hookspec(firstresult=True)
def snaptree_revert(
    backend: str, members: Sequence[MemberSnapshot], ctx: OpContext
) -> bool | None:
    """Bring each member's volume back to the content of that member.

    Other snapshots must survive a revert when the backend declares
    ``revert_to_any``.  Make the switch atomic per volume where you can (a
    rename, a QMP job), so that a crash leaves either the old or the new
    content.  Reverting twice to the same member must give the same result,
    because :func:`snaptree_recover_volume` and ``snaptree recover`` may redo
    a revert that a crash interrupted.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param members: one member per volume (for ``atomic_batch`` backends all
        the snapshot has on this backend's volumes, otherwise one).
    :param ctx: the operation's context.
    :returns: ``True`` when done; raise on failure.
    """


@hookspec(firstresult=True)
def snaptree_delete(
    backend: str, members: Sequence[MemberSnapshot], ctx: OpContext
) -> bool | None:
    """Remove the storage held by ``members``.

    Used both to delete snapshots and to undo members of a group snapshot that
    failed.  A member already gone is not an error (deletes are retried after
    a crash).

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param members: the members to remove.
    :param ctx: the operation's context.
    :returns: ``True`` when done; raise on failure.
    """


@hookspec(firstresult=True)
def snaptree_list(backend: str, volume: Volume) -> Sequence[MemberSnapshot] | None:
    """List the member snapshots that exist on storage for ``volume``.

    This is the backend's own view, not the catalog's: ``snaptree recover``
    and ``snaptree check`` compare the two to find orphans and missing
    members.  Report only objects snaptree made (their names carry a
    snapshot id); set ``valid=False`` for members that can no longer be
    reverted to (an overflowed LVM snapshot).  Objects made by other tools
    may be reported with ``snapshot_id=""``: ``snaptree check`` shows them as
    foreign and ``recover`` never touches them.  After a reboot, ``recover``
    deletes (through :func:`snaptree_delete`) the members you list whose
    snapshot id the catalog does not know and whose first 8 digits are an
    earlier boot's epoch: a create whose journal entry a power cut erased.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param volume: a claimed volume.
    :returns: the members found, possibly empty.
    """


@hookspec(firstresult=True)
def snaptree_space_used(backend: str, member: MemberSnapshot) -> SpaceUsage | None:
    """Report the space a member snapshot holds.

    Return ``SpaceUsage(None, None)`` when the backend cannot tell.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param member: a member from the catalog.
    :returns: a :class:`~snaptree.model.SpaceUsage`.
    """


@hookspec(firstresult=True)
def snaptree_volume_path(backend: str, volume: Volume) -> str | None:
    """The file or device a VM must open for ``volume`` now.

    Usually the locator itself; a qcow2 volume with external snapshots runs
    on its newest overlay, an LVM volume ``VG/LV`` is the device
    ``/dev/VG/LV``.  Used to start a group's VM (:func:`snaptree_vm_start`).
    The :class:`~snaptree.backend.VolumeBackend` base class answers with the
    locator.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param volume: a claimed volume.
    :returns: an absolute path.
    """


@hookspec(firstresult=True)
def snaptree_volume_footprint(backend: str, volume: Volume) -> Sequence[str] | None:
    """Name the paths that ``volume`` and its snapshots occupy.

    ``group create`` and ``group add`` refuse a volume whose storage
    overlaps a registered volume's, in any group: the same file or device
    (also through a symlink, a hard link or a bind mount), one inside the
    other's tree, or one inside the other's snapshot storage.  A revert of
    one would otherwise destroy the other's data or snapshots.  snaptree
    does the comparison; you only say where things are.

    Put first the path of the volume itself (the image file, the
    subvolume, the device node), then every place its snapshots and
    temporary objects live (a snapshot folder, a revert's temporary name),
    whether they exist yet or not.  A path stands for itself and, for a
    directory, everything below it.  Work from the locator alone, without
    running commands: this is asked of every registered volume, including
    ones that are gone.

    Optional: without an answer, a volume is only compared with the others
    by its spec.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param volume: a claimed volume, or one registered in a group.
    :returns: absolute paths, the volume's own first.
    """


@hookspec(firstresult=True)
def snaptree_recover_volume(backend: str, volume: Volume) -> Sequence[str] | None:
    """Finish or clean up backend-private leftovers on ``volume``.

    Called by ``snaptree recover`` for every volume, after a crash or not:
    remove temporary files of an interrupted copy, finish a deferred merge,
    drop half-made overlays.  Must be safe to call at any time, including
    when nothing needs doing.

    A revert you let end successfully but finish later (a deferred merge)
    may turn out never to happen: return a
    :class:`snaptree.model.RevertFailed` line for it, naming the snapshot
    it went back to.  ``recover`` then makes the snapshot that was current
    before that revert the group's current one again, if the revert's target
    still is.  Returning it again later changes nothing more.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param volume: a claimed volume.
    :returns: human-readable lines describing what was done (may be empty),
        each a ``str`` or a :class:`snaptree.model.RevertFailed`.
    """


# -- VM state (the ``xl snapshot`` / ``virsh snapshot-create`` flow) ----------


@hookspec(firstresult=True)
def snaptree_vm_suspend(group: Group, ctx: OpContext) -> bool | None:
    """Pause the VM that owns ``group`` so its disks and memory stop changing.

    Implemented by plugins that can talk to the VM (the qcow2 plugin, over
    the group's QMP socket).  Return ``None`` if the group has no VM you can
    reach.  :func:`snaptree_vm_resume` is always called afterwards, also on
    failure, when this returned ``True``.

    Stops at first non-None result.

    :param group: the group, with its ``qmp_socket``.
    :param ctx: the operation's context.
    :returns: ``True`` when paused.
    """


@hookspec(firstresult=True)
def snaptree_vm_resume(group: Group, ctx: OpContext) -> bool | None:
    """Resume a VM paused by :func:`snaptree_vm_suspend`.

    Also called by ``snaptree start`` to run a VM just started with
    :func:`snaptree_vm_start` (then ``ctx.scratch["operation"]`` is
    ``"start"``).

    Stops at first non-None result.

    :param group: the group, with its ``qmp_socket``.
    :param ctx: the operation's context.
    :returns: ``True`` when running again.
    """


@hookspec(firstresult=True)
def snaptree_vm_startable(group: Group) -> str | None:
    """Say whether you can start ``group``'s VM, before a revert changes anything.

    Some reverts need a fresh QEMU: an external snapshot (a running device
    cannot move to a new overlay), a disk-only snapshot of a running VM, a
    memory file (read only by a QEMU started with ``-incoming``).  snaptree
    asks this first and refuses the revert, nothing changed, when no plugin
    can start the VM.  A toolstack that owns its VMs' command lines answers
    here; the qcow2 plugin answers for groups with a launch recipe
    (group option ``qemu.launch``), as a last resort.

    Stops at first non-None result.

    :param group: the group, with its ``qmp_socket`` and options.
    :returns: a few words on how you would start it (shown to the user), or
        ``None`` if you cannot.
    """


@hookspec(firstresult=True)
def snaptree_vm_start(group: Group, images: Mapping[str, str], incoming: bool,
                      ctx: OpContext) -> bool | None:
    """Start ``group``'s VM, which is not running now, **paused**.

    Called during a revert after the disks were reverted, when the QEMU that
    ran them was shut down by snaptree (or none ran and memory must be
    restored).  Start QEMU stopped (``-S``) with its QMP monitor listening on
    ``group.qmp_socket`` and return once that socket accepts connections;
    snaptree then restores memory if any and resumes the guest.

    Stops at first non-None result.

    :param group: the group whose VM to start.
    :param images: for every volume, the file the VM must open now (a qcow2
        volume may have moved to a new overlay); keyed by volume locator.
    :param incoming: start QEMU with ``-incoming defer``: snaptree feeds it
        the saved memory with ``migrate-incoming``.
    :param ctx: the operation's context.
    :returns: ``True`` when QEMU is up; ``None`` if you do not start this
        group's VM.
    """


@hookspec(firstresult=True)
def snaptree_memory_save(group: Group, ctx: OpContext) -> MemoryState | None:
    """Save the paused VM's memory for the snapshot ``ctx.snapshot_id``.

    Called after :func:`snaptree_vm_suspend` and before the disks are
    snapshotted.  If the memory goes inside the disks (a qcow2 ``vmstate``),
    you may defer the work to your :func:`snaptree_snapshot` and return a
    :class:`~snaptree.model.MemoryState` that says where it will be.

    Stops at first non-None result.

    :param group: the group whose VM is paused.
    :param ctx: the operation's context (``ctx.snapshot_id`` names the snapshot).
    :returns: where the memory went.
    """


@hookspec(firstresult=True)
def snaptree_memory_restore(
    group: Group, snapshot: Snapshot, ctx: OpContext
) -> bool | None:
    """Bring the VM back running at ``snapshot``, memory included.

    Called by revert, after the disks were reverted, for a snapshot that has
    a memory state.

    Stops at first non-None result.

    :param group: the group whose VM is to resume at ``snapshot``.
    :param snapshot: the snapshot, with its ``memory`` state.
    :param ctx: the operation's context.
    :returns: ``True`` when the VM runs at that point.
    """


@hookspec(firstresult=True)
def snaptree_memory_delete(
    group: Group, memory: MemoryState, ctx: OpContext
) -> bool | None:
    """Remove a saved memory state (a memory file).  Gone already is fine.

    Stops at first non-None result.

    :param group: the group the snapshot belonged to.
    :param memory: what :func:`snaptree_memory_save` returned.
    :param ctx: the operation's context.
    :returns: ``True`` when removed.
    """


# -- optional extensions --------------------------------------------------------


@hookspec(firstresult=True)
def snaptree_map_snapshot(backend: str, member: MemberSnapshot) -> Sequence[str] | None:
    """Expose the partitions inside a member snapshot as read-only devices.

    Used by ``snaptree map``.  Wait until the device nodes exist before
    returning (see :mod:`snaptree.devices`).

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param member: the member snapshot to expose.
    :returns: the device paths made (one per partition), or ``None`` if
        ``backend`` is not yours.
    """


@hookspec(firstresult=True)
def snaptree_unmap_snapshot(backend: str, member: MemberSnapshot) -> Sequence[str] | None:
    """Remove the devices :func:`snaptree_map_snapshot` made.  Gone is fine.

    Stops at first non-None result.

    :param backend: backend name; return ``None`` if it is not yours.
    :param member: the member snapshot whose devices to remove.
    :returns: the device paths removed, or ``None`` if ``backend`` is not yours.
    """
