"""The qcow2 backend: internal and external snapshots, live or offline.

A group that names the QMP socket of a running QEMU is worked through QMP
(:mod:`.live`, :mod:`.memory`); otherwise ``qemu-img`` does the work
(:mod:`.offline`).  The mode is ``internal`` (tags inside the image, the
default) or ``external`` (overlays), chosen by the group option
``qcow2.mode`` or the create option ``mode``.
"""

from __future__ import annotations

import os
import time

from snaptree import (
    BackendInfo,
    Capabilities,
    Group,
    MemoryState,
    OpContext,
    SpaceUsage,
    Volume,
    VolumeBackend,
    hookimpl,
)
from snaptree.errors import BackendError, InvalidInput, NotSupported, VolumeNotFound
from snaptree.names import check_abs_path

from . import memory
from .layout import PARTIAL, active_image, memory_path, pause_marker, set_active, snapshot_dir
from .live import LiveOps
from .offline import OfflineOps, internal_member
from .qemuimg import QemuImg
from .qmp import reachable

__all__ = ["Qcow2Backend", "MODES"]

MODES = ("internal", "external")


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

    def _live(self, group: Group) -> LiveOps | None:
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
        image_format = self.qemu_img.info(path).get("format")
        if image_format != "qcow2":
            raise InvalidInput(f"{path} is a {image_format} image, not qcow2")
        return Volume("qcow2", path)

    def prepare(self, operation, volumes, ctx):
        # Every operation, live or not, reads the chains with qemu-img: refuse
        # before the coordinator journals anything.
        self.qemu_img.runner.which("qemu-img")
        # The format was checked when the volume was claimed; a qemu-img run
        # per disk here would cost more than the snapshot itself.
        for volume in volumes:
            if not os.path.isfile(active_image(volume.locator)):
                raise VolumeNotFound(f"qcow2 image {active_image(volume.locator)} does not exist")
        if operation == "snapshot":
            self._mode(ctx)
            return
        if operation == "revert":
            snapshot = ctx.scratch.get("snapshot")
            if snapshot is not None and snapshot.memory is not None and snapshot.memory.kind == "file":
                raise NotSupported(
                    "qcow2: restoring a memory file needs QEMU restarted with -incoming, which "
                    "snaptree cannot do; snapshot with mode internal to revert with memory")
        live = self._live(ctx.group)
        members = ctx.scratch.get("members", [])
        if operation == "revert" and live is not None:
            snapshot = ctx.scratch.get("snapshot")
            with_memory = snapshot is not None and snapshot.memory is not None
            with live.session() as session:
                held = [m for m in members if live.holds(session, active_image(m.locator))]
            for member in held:
                if member.data.get("mode") == "external":
                    raise NotSupported(
                        f"qcow2: QEMU at {ctx.group.qmp_socket} runs on {member.locator}; a running "
                        "QEMU cannot switch to a new overlay - shut it down to revert offline")
                if not with_memory or snapshot.memory.kind != "internal":
                    raise NotSupported(
                        f"qcow2: snapshot {ctx.snapshot_name!r} has no VM memory, and QEMU loads "
                        "only snapshots with memory into a running VM - shut it down to revert "
                        "offline")

    def snapshot(self, volumes, ctx):
        mode = self._mode(ctx)
        live = self._live(ctx.group)
        if live is None:
            return self.offline.snapshot(volumes, ctx.snapshot_id, mode)
        with live.session() as session:
            if ctx.option("memory") and mode == "internal":
                nodes = live.top_nodes(session, volumes)
                memory.save_internal(session, ctx.snapshot_id, nodes, ctx.progress)
                return [internal_member(v, ctx.snapshot_id, active_image(v.locator),
                                        vm_state=(i == 0)) for i, v in enumerate(volumes)]
            return live.snapshot(session, volumes, ctx.snapshot_id, mode)

    def revert(self, members, ctx):
        live = self._live(ctx.group)
        if live is not None:
            with live.session() as session:
                if any(live.holds(session, active_image(m.locator)) for m in members):
                    # prepare allowed only an internal snapshot with memory:
                    # snapshot-load reverts the disks with the memory, in
                    # snaptree_memory_restore, right after this call.
                    if ctx.option("memory"):
                        ctx.scratch["qcow2.load"] = [m.volume for m in members]
                        return
                    # ``recover`` redoes an interrupted revert without the
                    # memory hooks: load disks and memory here.
                    snapshot = ctx.scratch.get("snapshot")
                    if snapshot is None or snapshot.memory is None or snapshot.memory.kind != "internal":
                        raise NotSupported(
                            f"qcow2: QEMU at {ctx.group.qmp_socket} runs on the disks and snapshot "
                            f"{ctx.snapshot_name!r} has no internal VM memory; shut QEMU down to "
                            "revert offline")
                    nodes = live.top_nodes(session, [m.volume for m in members])
                    memory.load_internal(session, snapshot.memory.ref, nodes, ctx.progress)
                    return
        for member in members:
            self.offline.revert(member)

    def delete(self, members, ctx):
        live = self._live(ctx.group)
        for member in members:
            if live is not None:
                with live.session() as session:
                    if member.data.get("mode") == "internal":
                        done = live.delete_internal(session, member)
                    else:
                        done = live.delete_external(session, member, ctx.progress)
                if done:
                    continue
            self.offline.delete(member)

    def list(self, volume):
        return self.offline.list(volume)

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
            for name in sorted(os.listdir(folder)):
                if name.endswith(PARTIAL):
                    os.unlink(os.path.join(folder, name))
                    done.append(f"removed leftover {name}")
        active = active_image(volume.locator)
        if not os.path.exists(active):
            set_active(volume.locator, volume.locator)
            done.append(f"active image {active} was missing; back to {volume.locator}")
        resumed = memory.resume_abandoned(pause_marker(volume.locator))
        if resumed:
            done.append(resumed)
        return done

    # -- VM hooks -------------------------------------------------------------

    def _vm_group(self, group: Group) -> bool:
        return bool(group.qmp_socket and self._qcow2_volumes(group))

    def _vm(self, group: Group) -> LiveOps:
        live = self._live(group)
        if live is None:
            raise BackendError(f"qcow2: no QEMU answers on {group.qmp_socket}")
        return live

    @hookimpl
    def snaptree_vm_suspend(self, group, ctx):
        if not self._vm_group(group):
            return None
        # The marker (in the first disk's folder) lets ``recover`` resume
        # the VM if this process dies before snaptree_vm_resume.
        marker = pause_marker(self._qcow2_volumes(group)[0].locator)
        with self._vm(group).session() as session:
            ctx.scratch["qcow2.was_running"] = memory.pause(
                session, before_stop=lambda: memory.mark_paused(marker, group.qmp_socket))
        ctx.scratch["qcow2.paused_at"] = time.perf_counter()
        return True

    @hookimpl
    def snaptree_vm_resume(self, group, ctx):
        if not self._vm_group(group):
            return None
        pending = ctx.scratch.pop("qcow2.memory_file", None)
        live = self._live(group)
        if live is None and pending is None:
            # QEMU is gone (killed mid-operation): no VM is left paused, so
            # a failed create has nothing to resume.
            memory.clear_paused(pause_marker(self._qcow2_volumes(group)[0].locator))
            return True
        with (live or self._vm(group)).session() as session:
            if pending is not None:
                memory.migrate_to_file(session, pending, ctx.progress)
            if ctx.scratch.get("qcow2.was_running"):
                memory.resume(session)
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
        os.makedirs(snapshot_dir(first.locator), mode=0o700, exist_ok=True)
        ctx.scratch["qcow2.memory_file"] = path  # written by vm_resume, before cont
        return MemoryState(kind="file", ref=path)

    @hookimpl
    def snaptree_memory_restore(self, group, snapshot, ctx):
        if not self._vm_group(group) or snapshot.memory is None:
            return None
        if snapshot.memory.kind != "internal":
            raise NotSupported("qcow2: restoring a memory file needs QEMU restarted with -incoming")
        live = self._vm(group)
        volumes = ctx.scratch.pop("qcow2.load", None) or self._qcow2_volumes(group)
        with live.session() as session:
            nodes = live.top_nodes(session, volumes)
            memory.load_internal(session, snapshot.memory.ref, nodes, ctx.progress)
        return True

    @hookimpl
    def snaptree_memory_delete(self, group, memory, ctx):
        if memory.kind not in ("internal", "file") or not self._qcow2_volumes(group):
            return None
        ctx.scratch.pop("qcow2.memory_file", None)  # a failed create must not save it later
        if memory.kind == "file":
            for path in (memory.ref, memory.ref + ".partial"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise BackendError(f"qcow2: cannot delete {path}: {err.strerror}") from err
        return True
