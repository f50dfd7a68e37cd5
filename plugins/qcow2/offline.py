"""qcow2 snapshots with no QEMU running: ``qemu-img`` only.

Internal snapshots are tags inside the active image (``qemu-img snapshot``).
External ones follow libvirt: a snapshot freezes the active image and puts a
new overlay named with the snapshot id on top; revert makes a fresh overlay
on the snapshot's image and keeps every other branch; delete merges the
snapshot's overlay into the frozen image (``qemu-img commit``) when nothing
else is built on that image.
"""

from __future__ import annotations

import os
from typing import Sequence

from snaptree.errors import BackendError, NotFound, NotSupported
from snaptree.model import MemberSnapshot, Volume

from . import bases
from .header import holds_no_data, read_header
from .layout import (
    OVERLAY_FILE,
    PARTIAL,
    active_image,
    adopt,
    make_snapshot_dir,
    overlay_path,
    remove_file,
    run_overlay_path,
    set_active,
    snapshot_dir,
)
from .qemuimg import QemuImg

__all__ = ["Chain", "OfflineOps", "discard_unused", "tag_holder"]


class Chain:
    """The images of one volume (registered image + its folder) and their backings."""

    def __init__(self, qemu_img: QemuImg, image: str):
        self.image = image
        self.backing: dict[str, str | None] = {}
        self.tags: dict[str, list[dict]] = {}
        files = [image]
        folder = snapshot_dir(image)
        if os.path.isdir(folder):
            files += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                      if n.endswith(".qcow2")]
        for path in files:
            header = read_header(path)  # no process per image; qemu-img if it cannot tell
            if header is not None:
                backing, tags = header.backing, header.snapshots
            else:
                info = qemu_img.info(path)
                backing = info.get("full-backing-filename") or info.get("backing-filename")
                tags = list(info.get("snapshots", []))
            if backing and not os.path.isabs(backing):
                backing = os.path.join(os.path.dirname(path), backing)
            self.backing[path] = os.path.realpath(backing) if backing else None
            self.tags[path] = tags

    def children(self, path: str) -> list[str]:
        return [f for f, b in self.backing.items() if b == path]

    def unused_run_images(self, active: str) -> list[str]:
        """``run-*`` images nothing needs: not active, no image built on them, no tags."""
        return [p for p in self.backing
                if os.path.basename(p).startswith("run-") and p != active
                and not self.children(p) and not self.tags.get(p)]

    def snaptree_tags(self, path: str) -> list[str]:
        return [t["name"] for t in self.tags.get(path, []) if len(t["name"]) == 16]


def discard_unused(qemu_img: QemuImg, image: str) -> list[str]:
    """Remove the ``run-*`` images of ``image`` that nothing needs any more (a
    delete can leave the content of a deleted snapshot's branch so); returns them."""
    removed: list[str] = []
    while True:
        chain = Chain(qemu_img, image)
        unused = chain.unused_run_images(active_image(image))
        if not unused:
            return removed
        for path in unused:  # removing one may free its backing image: read again
            remove_file(path, "remove unused")
            removed.append(path)


def tag_holder(chain: Chain, member: MemberSnapshot, active: str) -> str:
    """The image holding internal snapshot ``member``: the active one if it
    does, else the one below it (an external snapshot taken later froze it)."""
    holders = [p for p, tags in chain.tags.items() if member.ref in [t["name"] for t in tags]]
    if not holders:
        raise NotFound(f"qcow2: internal snapshot {member.ref} is missing from "
                       f"{member.locator} and its overlays")
    if active in holders:
        return active
    recorded = member.data.get("image")
    return recorded if recorded in holders else holders[0]


def internal_member(volume: Volume, snapshot_id: str, image: str, vm_state: bool = False) -> MemberSnapshot:
    return MemberSnapshot(backend="qcow2", locator=volume.locator, snapshot_id=snapshot_id,
                          ref=snapshot_id, data={"mode": "internal", "image": image,
                                                 "vm_state": vm_state})


def external_member(volume: Volume, snapshot_id: str, frozen: str) -> MemberSnapshot:
    return MemberSnapshot(backend="qcow2", locator=volume.locator, snapshot_id=snapshot_id,
                          ref=frozen, data={"mode": "external",
                                            "overlay": overlay_path(volume.locator, snapshot_id)})


class OfflineOps:
    """Snapshot, revert and delete through qemu-img; the images must be free."""

    def __init__(self, qemu_img: QemuImg):
        self.qemu_img = qemu_img

    # -- snapshot -------------------------------------------------------------

    def snapshot(self, volumes: Sequence[Volume], snapshot_id: str, mode: str) -> list[MemberSnapshot]:
        made: list[MemberSnapshot] = []
        try:
            for volume in volumes:
                active = active_image(volume.locator)
                if mode == "internal":
                    self.qemu_img.snapshot_create(active, snapshot_id)
                    made.append(internal_member(volume, snapshot_id, active))
                else:
                    overlay = overlay_path(volume.locator, snapshot_id)
                    make_snapshot_dir(volume.locator)
                    self.qemu_img.check_writable(active)
                    self.qemu_img.create_overlay(overlay, active)
                    adopt(volume.locator, overlay)
                    made.append(external_member(volume, snapshot_id, active))
                    set_active(volume.locator, overlay)
        except BaseException:
            # all or none: take back what this call made before re-raising
            for member in reversed(made):
                try:
                    self.delete(member)
                except Exception:
                    pass
            raise
        return made

    # -- revert ---------------------------------------------------------------

    def revert(self, member: MemberSnapshot) -> None:
        if member.data.get("mode") == "internal":
            active = active_image(member.locator)
            holder = tag_holder(Chain(self.qemu_img, member.locator), member, active)
            if holder == active:
                self.qemu_img.snapshot_apply(active, member.ref)
                return
            # The tag lies in an image a later external snapshot froze: that
            # image is the other snapshot's content and must stay as it is.
            # The VM goes on a copy of the tagged state instead, built on the
            # same backing, so every branch survives.
            new = run_overlay_path(member.locator)
            backing, backing_format = self._backing_of(holder)
            self.qemu_img.copy_snapshot(holder, member.ref, new + PARTIAL, backing, backing_format)
            adopt(member.locator, new + PARTIAL)
            os.rename(new + PARTIAL, new)
            set_active(member.locator, new)
            self._discard(member.locator, active)
            return
        # The snapshot's content is whatever its overlay is built on now; a
        # delete of an older snapshot may have renamed that image.
        overlay = overlay_path(member.locator, member.snapshot_id)
        frozen = Chain(self.qemu_img, member.locator).backing.get(overlay)
        if frozen is None:
            raise NotFound(f"qcow2: overlay {overlay} of snapshot {member.snapshot_id} is missing")
        old = active_image(member.locator)
        if old != member.locator:
            self.qemu_img.check_writable(old)
        new = run_overlay_path(member.locator)
        self.qemu_img.create_overlay(new + PARTIAL, frozen)
        adopt(member.locator, new + PARTIAL)
        os.rename(new + PARTIAL, new)
        set_active(member.locator, new)
        self._discard(member.locator, old)

    def _backing_of(self, image: str) -> tuple[str | None, str | None]:
        """``image``'s backing file (absolute) and its format."""
        info = self.qemu_img.info(image)
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        if not backing:
            return None, None
        if not os.path.isabs(backing):
            backing = os.path.join(os.path.dirname(image), backing)
        return os.path.realpath(backing), info.get("backing-filename-format")

    def _discard(self, image: str, old: str) -> None:
        """Drop the content of a former active layer that nothing is built on."""
        if old == image:
            return  # never remove the registered image itself
        chain = Chain(self.qemu_img, image)
        if chain.children(old) or chain.snaptree_tags(old):
            return
        name = os.path.basename(old)
        if name.startswith("run-"):
            os.unlink(old)
        elif OVERLAY_FILE.match(name) and chain.backing.get(old):
            # the overlay carries its snapshot's identity: keep it, but empty
            self.qemu_img.create_overlay(old + PARTIAL, chain.backing[old])
            adopt(image, old + PARTIAL)
            os.replace(old + PARTIAL, old)

    # -- delete ---------------------------------------------------------------

    def delete(self, member: MemberSnapshot, chain: Chain | None = None) -> None:
        """Delete ``member``; ``chain``: its volume's chain if the caller read it already."""
        if member.data.get("mode") == "internal":
            if chain is None:
                chain = Chain(self.qemu_img, member.locator)
            for path in chain.tags:
                if member.ref in [t["name"] for t in chain.tags[path]]:
                    self.qemu_img.snapshot_delete(path, member.ref)
            return
        overlay = overlay_path(member.locator, member.snapshot_id)
        if not os.path.exists(overlay):
            bases.forget(member.locator, member.snapshot_id)
            return  # gone already (a retried delete, or removed by hand)
        if chain is None:
            chain = Chain(self.qemu_img, member.locator)
        frozen = chain.backing.get(overlay)
        if frozen is None:
            raise BackendError(f"qcow2: overlay {overlay} has lost its backing image")
        if chain.snaptree_tags(overlay):
            raise NotSupported(
                f"qcow2: {overlay} holds internal snapshots; delete those first")
        if frozen == os.path.realpath(active_image(member.locator)) and not chain.children(overlay):
            # A create stopped after making the overlay, before writing down
            # that the VM runs on it: 'active' still names the image below.
            # An overlay that holds nothing goes.  One that holds the guest's
            # writes after QEMU switched to it is merged down only into an
            # image below that is as the switch left it: a VM started on
            # that image since may have written newer data there.
            if self._never_written(overlay):
                remove_file(overlay, "remove unused overlay")
                bases.forget(member.locator, member.snapshot_id)
                return
            changed = bases.changed_since_switch(member.locator, member.snapshot_id, frozen)
            if changed is not None:
                raise BackendError(
                    f"qcow2: {overlay} holds writes of a VM that an interrupted snapshot switched "
                    f"to it, and {changed}; merging them down could put older data over newer, "
                    f"so snaptree leaves both: save what you need from {overlay}, remove it, "
                    "then run recover again")
        if chain.children(frozen) == [overlay]:
            self._merge_down(member.locator, chain, overlay, frozen)
        else:
            self._rename_away(member.locator, chain, overlay)
        bases.forget(member.locator, member.snapshot_id)
        discard_unused(self.qemu_img, member.locator)

    def _never_written(self, overlay: str) -> bool:
        """True when ``overlay`` holds no data and no process has it open."""
        self.qemu_img.check_unheld(overlay)  # VolumeInUse: a QEMU may run on it, unflushed
        return holds_no_data(overlay)

    def _merge_down(self, image: str, chain: Chain, overlay: str, frozen: str) -> None:
        # Only this overlay reads the frozen image, so the frozen image may
        # take the overlay's content; every step leaves a readable chain.
        self.qemu_img.commit(overlay)
        for child in chain.children(overlay):
            self.qemu_img.rebase_unsafe(child, frozen)
        if active_image(image) == overlay:
            set_active(image, frozen)
        os.unlink(overlay)

    def _rename_away(self, image: str, chain: Chain, overlay: str) -> None:
        # Other branches still need the frozen image: keep the data, drop
        # only the snapshot's name (a hard link keeps every step readable).
        renamed = run_overlay_path(image)
        os.link(overlay, renamed)
        for child in chain.children(overlay):
            self.qemu_img.rebase_unsafe(child, renamed)
        if active_image(image) == overlay:
            set_active(image, renamed)
        os.unlink(overlay)

    # -- list -----------------------------------------------------------------

    def list(self, volume: Volume) -> list[MemberSnapshot]:
        chain = Chain(self.qemu_img, volume.locator)
        found: list[MemberSnapshot] = []
        for path, tags in chain.tags.items():
            for tag in tags:
                name = tag["name"]
                sid = name if len(name) == 16 and all(c in "0123456789abcdef" for c in name) else ""
                found.append(MemberSnapshot(
                    backend="qcow2", locator=volume.locator, snapshot_id=sid, ref=name,
                    size_bytes=tag.get("vm-state-size"),
                    data={"mode": "internal", "image": path,
                          "vm_state": bool(tag.get("vm-state-size"))}))
        for path, backing in chain.backing.items():
            match = OVERLAY_FILE.match(os.path.basename(path))
            if match and os.path.dirname(path) == snapshot_dir(volume.locator) and backing:
                found.append(external_member(volume, match[1], backing))
        # data no snapshot and no VM uses (an interrupted revert, an older
        # snaptree's deletes): shown as foreign, so ``check`` reports it
        for path in chain.unused_run_images(active_image(volume.locator)):
            found.append(MemberSnapshot(backend="qcow2", locator=volume.locator, snapshot_id="",
                                        ref=path, data={"mode": "external", "unused": True}))
        return found
