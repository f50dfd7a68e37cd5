"""The qcow2 backend: internal and external snapshots, live or offline.

A group that names the QMP socket of a running QEMU is worked through QMP
(:mod:`.live`, :mod:`.memory`); otherwise ``qemu-img`` does the work
(:mod:`.offline`).  The mode is ``internal`` (tags inside the image, the
default) or ``external`` (overlays), chosen by the group option
``qcow2.mode`` or the create option ``mode``.
"""

from __future__ import annotations

import os
import stat
import time

from snaptree import (
    BackendInfo,
    Capabilities,
    Group,
    MemberSnapshot,
    MemoryState,
    OpContext,
    SpaceUsage,
    Volume,
    VolumeBackend,
    hookimpl,
)
from snaptree.errors import (BackendError, InvalidInput, NotFound, NotSupported, SnaptreeError,
                             VolumeNotFound)
from snaptree import faults, vm
from snaptree.names import check_abs_path, check_room_beside

from . import launch, memory, restart
from .layout import (BASE_NOTE_FILE, PARTIAL, active_image, make_snapshot_dir, memory_path, overlay_path,
                     pause_marker, remove_file, set_active, snapshot_dir)
from .live import LiveOps, block_nodes, stamp_of
from .offline import Chain, OfflineOps, internal_member, tag_holder
from .qemuimg import QemuImg
from .qmp import QMPSession, reachable

__all__ = ["Qcow2Backend", "MODES"]

MODES = ("internal", "external")

#: ctx.scratch key: the create's shared QMP connection (a _Connection)
_SHARED = "qcow2.session"
#: ctx.scratch key: each volume's active image, as a create's prepare read it
_ACTIVES = "qcow2.actives"
#: ctx.scratch key: each active image's stamp (live.stamp_of), as prepare saw it
_STAMPS = "qcow2.stamps"


class _Connection:
    """The QMP session a create shares between its hooks, opened on first use."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self._session: QMPSession | None = None
        self._opened = False

    def session(self) -> QMPSession | None:
        """The connected session, or ``None`` when no QEMU listened at first use."""
        if not self._opened:
            # a connect that raised is tried again by the next hook that asks
            self._session = QMPSession.open_if_listening(self.socket_path)
            self._opened = True
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


class Qcow2Backend(VolumeBackend):
    info = BackendInfo(
        name="qcow2",
        description="qcow2 images: internal or external snapshots, live over QMP or with qemu-img",
        capabilities=Capabilities(live=True, internal=True, external=True, read_only=False,
                                  revert_to_any=True, atomic_batch=True, memory_state=True),
        required_tools=("qemu-img",),
    )

    def __init__(self, qemu_img: QemuImg | None = None):
        self.qemu_img = qemu_img or QemuImg()
        self.offline = OfflineOps(self.qemu_img)

    # -- helpers --------------------------------------------------------------

    def _mode(self, ctx: OpContext) -> str:
        mode = ctx.option("mode") or ctx.option("qcow2.mode") or "internal"
        if mode not in MODES:
            raise InvalidInput(f"qcow2: mode must be 'internal' or 'external', not {mode!r}")
        return mode

    def _live(self, group: Group, ctx: OpContext | None = None) -> LiveOps | None:
        """Operations through the QEMU answering on the group's socket, if one does.

        During a create, the connection opened by ``snaptree_operation_begin``
        is used (and nothing listening then means offline); otherwise, or
        once that connection broke, the socket is probed afresh.
        """
        connection = ctx.scratch.get(_SHARED) if ctx is not None else None
        if connection is not None:
            session = connection.session()  # raises what the connect raised
            if session is None:
                return None
            if not session.broken:
                return LiveOps(self.qemu_img, group.qmp_socket, shared=session)
        if group.qmp_socket and reachable(group.qmp_socket):
            return LiveOps(self.qemu_img, group.qmp_socket)
        return None

    @staticmethod
    def _qcow2_volumes(group: Group) -> list[Volume]:
        return [v for v in group.volumes if v.backend == "qcow2"]

    # -- volume hooks ---------------------------------------------------------

    def claim(self, locator):
        path = check_abs_path(locator, "qcow2 image path")
        if not os.path.isfile(path):
            raise VolumeNotFound(f"qcow2 image {path} does not exist")
        check_room_beside(path, [snapshot_dir(path)], "qcow2")
        image_format = self.qemu_img.info(path).get("format")
        if image_format != "qcow2":
            raise InvalidInput(f"{path} is a {image_format} image, not qcow2")
        return Volume("qcow2", path)

    def footprint(self, volume):
        # overlays, the 'active' note and memory files all live in the folder
        return [volume.locator, snapshot_dir(volume.locator)]

    def prepare(self, operation, volumes, ctx):
        # Every operation, live or not, reads the chains with qemu-img: refuse
        # before the coordinator journals anything.
        self.qemu_img.runner.which("qemu-img")
        # The format was checked when the volume was claimed; a qemu-img run
        # per disk here would cost more than the snapshot itself.
        actives, stamps = {}, {}
        for volume in volumes:
            active = actives[volume.locator] = active_image(volume.locator)
            try:
                found = os.stat(active)
            except OSError:
                found = None
            if found is None or not stat.S_ISREG(found.st_mode):
                raise VolumeNotFound(f"qcow2 image {active} does not exist")
            stamps[active] = stamp_of(found)
        if operation == "snapshot":
            self._mode(ctx)
            # A create prepares under the group's lock: the images stay
            # these, and what they were like now tells which of them the
            # transaction writes (see LiveOps.snapshot).
            ctx.scratch[_ACTIVES] = actives
            ctx.scratch[_STAMPS] = stamps
            return
        if operation == "revert":
            members = ctx.scratch.get("members", [])
            self._check_revert(ctx, members)
            touched = self._check_revert_sources(ctx, members)
            if ctx.scratch["qcow2.plan"] == "offline":
                self._check_free(touched)
        if operation == "delete":
            members = ctx.scratch.get("members", [])
            chains: dict[str, Chain] = {}  # the checks read each member's chain once
            self._check_no_tags_above(members, chains, ctx.scratch.get("deleting", ()))
            if self._live(ctx.group, ctx) is None:
                self._check_free(self._delete_writes(members, chains))
            blocked = self._needs_vm_down(ctx, members, chains)
            if blocked and self._startable(ctx) is None:
                raise NotSupported(
                    f"qcow2: QEMU at {ctx.group.qmp_socket} runs on {blocked[0].locator} and cannot "
                    f"delete {ctx.snapshot_name!r} in place (its image is shared with other "
                    f"branches, or lies below the running disk); give the group a launch recipe "
                    f"(-o {launch.OPTION}=FILE) so snaptree can save and restart the VM around "
                    "it, or shut QEMU down and delete offline")

    def _revert_plan(self, ctx: OpContext, members) -> str:
        """How a revert goes: ``load`` (``snapshot-load`` in the running QEMU),
        ``restart`` (shut QEMU down, revert offline, start it again) or
        ``offline`` (no QEMU runs on the disks)."""
        live = self._live(ctx.group)
        if live is None:
            return "offline"
        with live.session() as session:
            held = [m for m in members if live.holds(session, active_image(m.locator))]
        if not held:
            return "offline"
        snapshot = ctx.scratch.get("snapshot")
        if (snapshot is not None and snapshot.memory is not None
                and not ctx.option("disks_only")
                and snapshot.memory.kind == "internal"
                and all(m.data.get("mode") == "internal" for m in members)):
            return "load"
        return "restart"

    def _check_revert(self, ctx: OpContext, members) -> None:
        """Refuse, before anything changes, a revert that needs a VM nobody can start."""
        plan = ctx.scratch["qcow2.plan"] = self._revert_plan(ctx, members)
        snapshot = ctx.scratch.get("snapshot")
        memory_kind = snapshot.memory.kind if snapshot is not None and snapshot.memory else None
        if ctx.option("disks_only"):
            memory_kind = None
        if plan == "restart":
            if self._startable(ctx) is None:
                why = ("a disks-only revert boots the VM afresh" if ctx.option("disks_only") else
                       "its VM memory is in a file that only a QEMU started with -incoming reads"
                       if memory_kind == "file" else
                       "an external snapshot needs the VM on a new overlay"
                       if any(m.data.get("mode") == "external" for m in members) else
                       "it has no VM memory, and QEMU loads only snapshots with memory into a "
                       "running VM")
                raise NotSupported(
                    f"qcow2: QEMU at {ctx.group.qmp_socket} runs on the disks and reverting to "
                    f"{ctx.snapshot_name!r} needs it restarted ({why}); give the group a launch "
                    f"recipe (-o {launch.OPTION}=FILE) so snaptree can restart it, or shut QEMU "
                    "down and revert offline")
        elif plan == "offline" and memory_kind is not None and ctx.option("memory"):
            if self._startable(ctx) is None:
                start_it = ("start QEMU on the disks first, or " if memory_kind == "internal" else "")
                raise NotSupported(
                    f"qcow2: snapshot {ctx.snapshot_name!r} holds VM memory and no QEMU answers on "
                    f"{ctx.group.qmp_socket}; {start_it}give the group a launch recipe "
                    f"(-o {launch.OPTION}=FILE) so snaptree can start the VM")

    def _check_revert_sources(self, ctx: OpContext, members) -> list[str]:
        """Refuse, before anything changes, a revert to a tag or overlay that is gone,
        or to memory QEMU cannot load.  Returns the images an offline revert
        writes or reads whole: each active image, and the image holding an
        internal tag when that is not the active one (each chain read once)."""
        snapshot = ctx.scratch.get("snapshot")
        loads_memory = bool(ctx.option("memory") and snapshot is not None
                            and snapshot.memory is not None and snapshot.memory.kind == "internal")
        touched = []
        for member in members:
            chain = Chain(self.qemu_img, member.locator)
            active = active_image(member.locator)
            touched.append(active)
            if member.data.get("mode") == "internal":
                holder = tag_holder(chain, member, active)
                if holder != active:
                    if loads_memory:
                        raise NotSupported(
                            f"qcow2: the VM memory of {ctx.snapshot_name!r} lies in {holder}, "
                            "which a later external snapshot froze, and QEMU loads memory only "
                            "from the image it runs on; revert with --disks-only to get the "
                            "disks back (the VM boots afresh)")
                    touched.append(holder)
                continue
            overlay = overlay_path(member.locator, member.snapshot_id)
            if chain.backing.get(overlay) is None:
                raise NotFound(f"qcow2: overlay {overlay} of snapshot {ctx.snapshot_name!r} is "
                               "missing or has lost its backing image")
        return touched

    def _chain(self, chains: dict[str, Chain], member: MemberSnapshot) -> Chain:
        """``member``'s image chain: read on first use, then kept in ``chains``
        for the other steps of the same prepare or delete."""
        chain = chains.get(member.locator)
        if chain is None:
            chain = chains[member.locator] = Chain(self.qemu_img, member.locator)
        return chain

    def _check_no_tags_above(self, members, chains: dict[str, Chain], deleting) -> None:
        """Refuse, before anything is journaled, an external snapshot whose
        overlay holds internal snapshots this delete does not remove too."""
        for member in members:
            if member.data.get("mode") == "internal":
                continue
            overlay = overlay_path(member.locator, member.snapshot_id)
            if not os.path.exists(overlay):
                continue
            kept = [t for t in self._chain(chains, member).snaptree_tags(overlay)
                    if t not in deleting]
            if kept:
                raise NotSupported(
                    f"qcow2: {overlay} holds internal snapshots taken on top of this one (ids "
                    f"{', '.join(kept)}); delete those first, or this one with --children")

    def _delete_writes(self, members, chains: dict[str, Chain]) -> list[str]:
        """Images an offline delete writes: the tag's holders, or the overlay,
        its base and the images built on it."""
        images = []
        for member in members:
            chain = self._chain(chains, member)
            if member.data.get("mode") == "internal":
                images += [p for p, tags in chain.tags.items()
                           if member.ref in [t["name"] for t in tags]]
                continue
            overlay = overlay_path(member.locator, member.snapshot_id)
            frozen = chain.backing.get(overlay)
            if frozen is not None:
                images += [overlay, frozen, *chain.children(overlay)]
        return images

    def _check_free(self, images) -> None:
        """Raise ``VolumeInUse`` if another process holds any of ``images`` for writing."""
        for image in dict.fromkeys(images):
            self.qemu_img.check_writable(image)

    def _startable(self, ctx: OpContext) -> str | None:
        if ctx.hook is not None:
            return ctx.hook.snaptree_vm_startable(group=ctx.group)
        return self.snaptree_vm_startable(ctx.group)

    def snapshot(self, volumes, ctx):
        mode = self._mode(ctx)
        live = self._live(ctx.group, ctx)
        if live is None:
            return self.offline.snapshot(volumes, ctx.snapshot_id, mode)
        with live.session() as session:
            if ctx.option("memory") and mode == "internal":
                nodes = live.top_nodes(session, volumes)
                memory.save_internal(session, ctx.snapshot_id, nodes, ctx.progress)
                return [internal_member(v, ctx.snapshot_id, active_image(v.locator),
                                        vm_state=(i == 0)) for i, v in enumerate(volumes)]
            return live.snapshot(session, volumes, ctx.snapshot_id, mode,
                                 actives=ctx.scratch.get(_ACTIVES),
                                 stamps=ctx.scratch.get(_STAMPS))

    def revert(self, members, ctx):
        plan = ctx.scratch.pop("qcow2.plan", None) or self._revert_plan(ctx, members)
        snapshot = ctx.scratch.get("snapshot")
        if plan == "load":
            # snapshot-load reverts the disks with the memory: in
            # snaptree_memory_restore, right after this call.
            if ctx.option("memory"):
                ctx.scratch["qcow2.load"] = [m.volume for m in members]
                return
            # ``recover`` redoes an interrupted revert without the memory
            # hooks: load disks and memory here.
            live = self._vm(ctx.group)
            with live.session() as session:
                nodes = live.top_nodes(session, [m.volume for m in members])
                self._warn_stuck(ctx, memory.load_internal(session, snapshot.memory.ref, nodes,
                                                           ctx.progress))
            return
        if plan == "restart":
            if self._startable(ctx) is None:
                self._check_revert(ctx, members)  # ``recover`` skips prepare: refuse here
            self._shut_down(ctx)
        reverted: list[str] = []
        try:
            for member in members:
                self.offline.revert(member)
                reverted.append(member.locator)
        except SnaptreeError as err:
            if reverted:
                err.message += f" (qcow2 disks already reverted: {', '.join(reverted)})"
            raise
        if plan == "restart" and not ctx.scratch.get("vm_hooks"):
            # ``recover``: no resume hook follows; start (and load any
            # memory file) now
            self._start(ctx, memory_file=None if ctx.option("disks_only")
                        else self._memory_file(snapshot))
            self._resume_started(ctx)

    def _run_guest(self, session, ctx: OpContext) -> None:
        """``cont`` the guest; a guest that needs a reset stays as it is, with a warning."""
        self._warn_stuck(ctx, memory.resume(session))

    @staticmethod
    def _warn_stuck(ctx: OpContext, state: str | None) -> None:
        if state is not None:
            ctx.scratch.setdefault("warnings", []).append(
                f"qcow2: the guest at {ctx.group.qmp_socket} is in state {state!r}, as it was "
                "when saved; it runs again only after a reset (QMP system_reset, then cont)")

    @staticmethod
    def _memory_file(snapshot) -> str | None:
        if snapshot is not None and snapshot.memory is not None and snapshot.memory.kind == "file":
            return snapshot.memory.ref
        return None

    def _with_vm_saved(self, ctx: OpContext, work) -> None:
        """Run ``work`` with the group's QEMU gone, the guest's state kept in a file.

        ``stop``, ``migrate`` memory and device state to a file, ``quit``;
        after ``work`` (also when it fails) a new QEMU loads the file and the
        guest runs on as if it had only been paused.
        """
        group = ctx.group
        images = [v.locator for v in self._qcow2_volumes(group)]
        saved = restart.saved_state_path(images[0])
        with self._vm(group).session() as session:
            was_running = memory.pause(session)
            restart.mark_restart(images, group.qmp_socket, group.options.get(launch.OPTION),
                                 running=was_running, memory_file=saved)
            memory.migrate_to_file(session, saved, ctx.progress)
            launch.shut_down(session, group.qmp_socket)
        faults.checkpoint("qcow2:vm-down")
        try:
            work()
        finally:
            self._start(ctx, memory_file=saved)
            with self._vm(group).session() as session:
                if was_running:
                    self._run_guest(session, ctx)
            restart.clear_restart(images[0])
            memory.discard(saved)

    def _shut_down(self, ctx: OpContext) -> None:
        """Quit the group's QEMU, leaving a note so ``recover`` can start it again."""
        group = ctx.group
        images = [v.locator for v in self._qcow2_volumes(group)]
        with self._vm(group).session() as session:
            if "qcow2.was_running" not in ctx.scratch:
                ctx.scratch["qcow2.was_running"] = bool(
                    session.execute("query-status").get("running"))
            restart.mark_restart(images, group.qmp_socket, group.options.get(launch.OPTION),
                                 running=ctx.scratch["qcow2.was_running"])
            launch.shut_down(session, group.qmp_socket)
        faults.checkpoint("qcow2:vm-down")

    def _start(self, ctx: OpContext, *, memory_file: str | None) -> None:
        """Start the group's VM paused on its current images; load ``memory_file`` if given."""
        group = ctx.group
        incoming = memory_file is not None
        if ctx.hook is not None:
            vm.start(ctx.hook, group, ctx, incoming=incoming)
        else:
            images = {v.locator: active_image(v.locator) for v in self._qcow2_volumes(group)}
            self.snaptree_vm_start(group, images, incoming, ctx)
        if memory_file is not None:
            with self._vm(group).session() as session:
                memory.load_file(session, memory_file, ctx.progress)

    def _resume_started(self, ctx: OpContext) -> None:
        """Run the guest of a VM snaptree started, then drop the restart note."""
        first = self._qcow2_volumes(ctx.group)[0].locator
        note = restart.read_restart(first) or {}
        with self._vm(ctx.group).session() as session:
            if note.get("running", True) or self._memory_file(ctx.scratch.get("snapshot")):
                self._run_guest(session, ctx)
        restart.clear_restart(first)

    def _needs_vm_down(self, ctx: OpContext, members,
                       chains: dict[str, Chain]) -> list[MemberSnapshot]:
        """Members a running QEMU cannot delete: an external snapshot whose base
        image other branches share (``block-commit`` would change them too) or
        an internal one inside a read-only image below the running disk.  The
        chains read (only with QEMU running) are left in ``chains``."""
        live = self._live(ctx.group, ctx)
        if live is None:
            return []
        with live.session() as session:
            nodes = block_nodes(session)
        out = []
        for member in members:
            chain = self._chain(chains, member)
            if member.data.get("mode") == "internal":
                holders = [p for p, tags in chain.tags.items()
                           if member.ref in [t["name"] for t in tags]]
                if any(p in nodes and p != active_image(member.locator) for p in holders):
                    out.append(member)
                continue
            overlay = overlay_path(member.locator, member.snapshot_id)
            frozen = chain.backing.get(overlay)
            if overlay in nodes and frozen is not None and chain.children(frozen) != [overlay]:
                out.append(member)
        return out

    def delete(self, members, ctx):
        # Each member's chain is read once, by the check or else by the
        # delete itself; a member's delete changes only its own chain.
        chains: dict[str, Chain] = {}
        if self._needs_vm_down(ctx, members, chains):
            # QEMU keeps running from the guest's point of view: its memory
            # goes to a file, QEMU quits, qemu-img does the work, and a new
            # QEMU loads the memory back
            self._with_vm_saved(ctx, lambda: [self.offline.delete(m, chains.get(m.locator))
                                              for m in members])
            return
        live = self._live(ctx.group, ctx)
        for member in members:
            chain = chains.get(member.locator)
            if live is not None:
                with live.session() as session:
                    if member.data.get("mode") == "internal":
                        done = live.delete_internal(session, member, chain)
                    else:
                        done = live.delete_external(session, member, ctx.progress, chain)
                if done:
                    continue
            self.offline.delete(member, chain)

    def list(self, volume):
        return self.offline.list(volume)

    def volume_path(self, volume):
        return active_image(volume.locator)

    def space_used(self, member):
        if member.data.get("mode") == "external":
            try:
                return SpaceUsage(exclusive_bytes=None,
                                  referenced_bytes=os.stat(member.ref).st_blocks * 512)
            except OSError:
                return SpaceUsage()
        return SpaceUsage()

    def recover_volume(self, volume):
        done = []
        folder = snapshot_dir(volume.locator)
        if os.path.isdir(folder):
            names = sorted(os.listdir(folder))
            for name in names:
                if name.endswith(PARTIAL):
                    os.unlink(os.path.join(folder, name))
                    done.append(f"removed leftover {name}")
                elif (note := BASE_NOTE_FILE.match(name)) and f"{note[1]}.qcow2" not in names:
                    # the note of an overlay removed by hand after recover refused to merge it
                    os.unlink(os.path.join(folder, name))
                    done.append(f"removed leftover {name}")
        active = active_image(volume.locator)
        if not os.path.exists(active):
            set_active(volume.locator, volume.locator)
            done.append(f"active image {active} was missing; back to {volume.locator}")
        restarted = restart.finish_abandoned_restart(volume.locator, self.qemu_img.runner)
        if restarted:
            done.append(restarted)
        resumed = memory.resume_abandoned(pause_marker(volume.locator))
        if resumed:
            done.append(resumed)
        return done

    # -- one QMP connection for a whole create --------------------------------

    @hookimpl
    def snaptree_operation_begin(self, group, operation, ctx):
        # A create talks to one QEMU from pause to resume: one connection.
        # Reverts and deletes may quit and restart QEMU midway; they connect
        # per step.
        if operation == "snapshot" and group.qmp_socket and self._qcow2_volumes(group):
            ctx.scratch[_SHARED] = _Connection(group.qmp_socket)

    @hookimpl
    def snaptree_operation_end(self, group, operation, ctx, error):
        connection = ctx.scratch.pop(_SHARED, None)
        if connection is not None:
            connection.close()

    # -- VM hooks -------------------------------------------------------------

    def _vm_group(self, group: Group) -> bool:
        return bool(group.qmp_socket and self._qcow2_volumes(group))

    def _vm(self, group: Group, ctx: OpContext | None = None) -> LiveOps:
        live = self._live(group, ctx)
        if live is None:
            raise BackendError(f"qcow2: no QEMU answers on {group.qmp_socket}")
        return live

    @hookimpl
    def snaptree_vm_suspend(self, group, ctx):
        if not self._vm_group(group):
            return None
        # The marker (in the first disk's folder) lets ``recover`` resume
        # the VM if this process dies before snaptree_vm_resume.
        first = self._qcow2_volumes(group)[0].locator
        marker = pause_marker(first)
        if "snapshot" in ctx.scratch and self._live(group, ctx) is None:
            # a revert with no QEMU running: nothing to pause, but resume is
            # where a VM that must be started for memory is run
            ctx.scratch["qcow2.was_running"] = False
            return True
        make_snapshot_dir(first)  # owned like the disk, before the marker goes in
        with self._vm(group, ctx).session() as session:
            ctx.scratch["qcow2.was_running"] = memory.pause(
                session, before_stop=lambda: memory.mark_paused(marker, group.qmp_socket))
        ctx.scratch["qcow2.paused_at"] = time.perf_counter()
        return True

    @hookimpl
    def snaptree_vm_resume(self, group, ctx):
        if not self._vm_group(group):
            return None
        if "snapshot" in ctx.scratch:
            return self._resume_after_revert(group, ctx)
        if ctx.scratch.get("operation") == "start":
            with self._vm(group, ctx).session() as session:
                self._run_guest(session, ctx)
            return True
        pending = ctx.scratch.pop("qcow2.memory_file", None)
        live = self._live(group, ctx)
        if live is None and pending is None:
            # QEMU is gone (killed mid-operation): no VM is left paused, so
            # a failed create has nothing to resume.
            memory.clear_paused(pause_marker(self._qcow2_volumes(group)[0].locator))
            return True
        with (live or self._vm(group, ctx)).session() as session:
            if pending is not None:
                memory.migrate_to_file(session, pending, ctx.progress)
            if ctx.scratch.get("qcow2.was_running"):
                self._run_guest(session, ctx)
                memory.clear_paused(pause_marker(self._qcow2_volumes(group)[0].locator))
        paused_at = ctx.scratch.get("qcow2.paused_at")
        if paused_at is not None:
            ctx.scratch["qcow2.paused_seconds"] = time.perf_counter() - paused_at
        return True

    @hookimpl
    def snaptree_memory_save(self, group, ctx):
        if not self._vm_group(group):
            return None
        first = self._qcow2_volumes(group)[0]
        if self._mode(ctx) == "internal":
            # the snapshot-save job in snapshot() writes it into the first disk
            return MemoryState(kind="internal", ref=ctx.snapshot_id,
                               data={"image": active_image(first.locator)})
        path = memory_path(first.locator, ctx.snapshot_id)
        make_snapshot_dir(first.locator)
        ctx.scratch["qcow2.memory_file"] = path  # written by vm_resume, before cont
        return MemoryState(kind="file", ref=path)

    def _resume_after_revert(self, group: Group, ctx: OpContext) -> bool:
        """Start the VM again if the revert shut it down, and run it as it should."""
        first = self._qcow2_volumes(group)[0].locator
        # the note of this revert, or of an earlier one that failed to start the VM
        note = restart.read_restart(first)
        if note is not None and self._live(group) is None:
            # a disk-only revert (fresh boot on the reverted disks), or a
            # failed revert putting the VM back on the disks it has now
            self._start(ctx, memory_file=None)
        live = self._live(group)
        if live is not None:
            # after a revert to a point with memory the guest runs from there
            run = (ctx.scratch.get("qcow2.was_running") or bool(ctx.option("memory"))
                   or bool(note and note.get("running")))
            if run:
                with live.session() as session:
                    self._run_guest(session, ctx)
        memory.clear_paused(pause_marker(first))
        if note is not None:
            restart.clear_restart(first)
        return True

    @hookimpl
    def snaptree_memory_restore(self, group, snapshot, ctx):
        if not self._vm_group(group) or snapshot.memory is None:
            return None
        if snapshot.memory.kind == "file":
            if self._live(group) is not None:
                raise NotSupported(
                    f"qcow2: a QEMU still answers on {group.qmp_socket}; a memory file loads only "
                    "into a QEMU snaptree starts")
            self._start(ctx, memory_file=snapshot.memory.ref)
            return True
        if snapshot.memory.kind != "internal":
            return None
        if self._live(group) is None:
            self._start(ctx, memory_file=None)  # paused; snapshot-load then runs it
        live = self._vm(group)
        volumes = ctx.scratch.pop("qcow2.load", None) or self._qcow2_volumes(group)
        with live.session() as session:
            nodes = live.top_nodes(session, volumes)
            self._warn_stuck(ctx, memory.load_internal(session, snapshot.memory.ref, nodes,
                                                       ctx.progress))
        return True

    # -- the built-in launcher: a group's launch recipe -------------------------

    def _recipe(self, group: Group) -> launch.Recipe | None:
        path = group.options.get(launch.OPTION)
        if not path or not group.qmp_socket or not self._qcow2_volumes(group):
            return None
        return launch.Recipe.load(path, [v.locator for v in self._qcow2_volumes(group)],
                                  group.qmp_socket)

    @hookimpl(trylast=True)
    def snaptree_vm_startable(self, group):
        recipe = self._recipe(group)
        return None if recipe is None else f"from launch recipe {recipe.path}"

    @hookimpl(trylast=True)
    def snaptree_vm_start(self, group, images, incoming, ctx):
        recipe = self._recipe(group)
        if recipe is None:
            return None
        qcow2_images = {v.locator: images.get(v.locator, active_image(v.locator))
                        for v in self._qcow2_volumes(group)}
        recipe.start(self.qemu_img.runner, group.qmp_socket, incoming=incoming,
                     images=qcow2_images)
        return True

    @hookimpl
    def snaptree_memory_delete(self, group, memory, ctx):
        if memory.kind not in ("internal", "file") or not self._qcow2_volumes(group):
            return None
        ctx.scratch.pop("qcow2.memory_file", None)  # a failed create must not save it later
        if memory.kind == "file":
            for path in (memory.ref, memory.ref + ".partial"):
                remove_file(path, "delete")
        return True
