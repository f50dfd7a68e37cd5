"""qcow2 snapshots through a running QEMU, over QMP.

Every qcow2 disk of a group that one QEMU owns is snapshotted in one QMP
``transaction``: QEMU prepares every action before committing any, so the
group gets all its member snapshots or none.  Block nodes are found by the
file of the volume's active image (``query-named-block-nodes``); after an
external snapshot that is the new overlay, so internal snapshots then land
in the new top node.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from snaptree.errors import BackendError, NotSupported, QMPFailed
from snaptree.model import MemberSnapshot, Volume

from .layout import active_image, overlay_path, set_active, snapshot_dir
from .offline import Chain, external_member, internal_member
from .qemuimg import QemuImg
from .qmp import QMPSession

__all__ = ["LiveOps", "block_nodes"]


def block_nodes(session: QMPSession) -> dict[str, str]:
    """Map image file -> node name of every qcow2 format node QEMU has open."""
    nodes: dict[str, str] = {}
    # flat: no nested backing-chain records, which grow with every snapshot
    for node in session.execute("query-named-block-nodes", {"flat": True}):
        if node.get("drv") == "qcow2" and node.get("file"):
            nodes.setdefault(os.path.realpath(node["file"]), node["node-name"])
    return nodes


def _node_name(snapshot_id: str, index: int) -> str:
    # node names: a letter first, at most 31 characters
    return f"st{snapshot_id}n{index}"


class LiveOps:
    """Operations on the disks of one running QEMU, one QMP session each."""

    def __init__(self, qemu_img: QemuImg, socket_path: str):
        self.qemu_img = qemu_img
        self.socket_path = socket_path

    def session(self) -> QMPSession:
        return QMPSession(self.socket_path)

    def top_nodes(self, session: QMPSession, volumes: Sequence[Volume]) -> list[str]:
        """Node name of each volume's active image; raise when QEMU does not hold it."""
        nodes = block_nodes(session)
        names = []
        for volume in volumes:
            active = active_image(volume.locator)
            if active not in nodes:
                raise BackendError(
                    f"qcow2: the QEMU at {self.socket_path} has no block node for {active} "
                    f"(the active image of {volume.locator})")
            names.append(nodes[active])
        return names

    # -- snapshot -------------------------------------------------------------

    def snapshot(self, session: QMPSession, volumes: Sequence[Volume], snapshot_id: str,
                 mode: str) -> list[MemberSnapshot]:
        tops = self.top_nodes(session, volumes)
        actions: list[dict[str, Any]] = []
        members: list[MemberSnapshot] = []
        for index, (volume, node) in enumerate(zip(volumes, tops)):
            active = active_image(volume.locator)
            if mode == "internal":
                actions.append({"type": "blockdev-snapshot-internal-sync",
                                "data": {"device": node, "name": snapshot_id}})
                members.append(internal_member(volume, snapshot_id, active))
            else:
                os.makedirs(snapshot_dir(volume.locator), mode=0o700, exist_ok=True)
                actions.append({"type": "blockdev-snapshot-sync",
                                "data": {"node-name": node,
                                         "snapshot-file": overlay_path(volume.locator, snapshot_id),
                                         "snapshot-node-name": _node_name(snapshot_id, index),
                                         "format": "qcow2", "mode": "absolute-paths"}})
                members.append(external_member(volume, snapshot_id, active))
        try:
            # No completion-mode "grouped": QEMU 7.2 refuses it for snapshot
            # actions (it concerns backup jobs only); the transaction itself
            # prepares every action before committing any.
            session.execute("transaction", {"actions": actions})
        except QMPFailed:
            if mode == "external":  # QEMU leaves the overlay files it created
                self._remove_unused_overlays(session, members)
            raise
        if mode == "external":
            for volume, member in zip(volumes, members):
                set_active(volume.locator, member.data["overlay"])
        return members

    def _remove_unused_overlays(self, session: QMPSession, members: Sequence[MemberSnapshot]) -> None:
        held = block_nodes(session)
        for member in members:
            overlay = member.data["overlay"]
            if overlay not in held:
                try:
                    os.unlink(overlay)
                except FileNotFoundError:
                    pass

    # -- delete ---------------------------------------------------------------

    def holds(self, session: QMPSession, path: str) -> bool:
        return path in block_nodes(session)

    def delete_internal(self, session: QMPSession, member: MemberSnapshot) -> bool:
        """Delete an internal snapshot in a node QEMU has open; False if QEMU does not hold it."""
        nodes = block_nodes(session)
        chain = Chain(self.qemu_img, member.locator)
        holders = [p for p, tags in chain.tags.items() if member.ref in [t["name"] for t in tags]]
        if not any(p in nodes for p in holders):
            return False
        for path in holders:
            if path != active_image(member.locator):
                raise NotSupported(
                    f"qcow2: internal snapshot {member.ref} lies in {path}, a read-only image "
                    "below the running disk; shut QEMU down to delete it")
            session.execute("blockdev-snapshot-delete-internal-sync",
                            {"device": nodes[path], "name": member.ref})
        return True

    def delete_external(self, session: QMPSession, member: MemberSnapshot,
                        progress: Callable[..., None]) -> bool:
        """Merge the snapshot's overlay down with ``block-commit``; False if QEMU does not hold it."""
        overlay = overlay_path(member.locator, member.snapshot_id)
        nodes = block_nodes(session)
        if overlay not in nodes:
            return False
        chain = Chain(self.qemu_img, member.locator)
        frozen = chain.backing.get(overlay)
        if frozen is None or frozen not in nodes:
            raise BackendError(f"qcow2: cannot find the image below {overlay} in QEMU")
        if chain.children(frozen) != [overlay]:
            raise NotSupported(
                f"qcow2: {frozen} is the base of other branches too; libvirt refuses this "
                "merge as well - shut QEMU down to delete the snapshot offline")
        if chain.snaptree_tags(overlay):
            raise NotSupported(f"qcow2: {overlay} holds internal snapshots; delete those first")
        active = active_image(member.locator)
        top = nodes[active]
        job_id = f"snaptree-commit-{member.snapshot_id}"
        arguments: dict[str, Any] = {"job-id": job_id, "device": top, "base-node": nodes[frozen],
                                     "auto-dismiss": False}
        if overlay != active:
            arguments["top-node"] = nodes[overlay]
        session.run_job("block-commit", arguments, job_id, progress=progress,
                        label=f"merge {os.path.basename(overlay)}",
                        complete_when_ready=(overlay == active))
        for child in chain.children(overlay):
            if child not in nodes:  # QEMU rewrote the header of the child it holds
                self.qemu_img.rebase_unsafe(child, frozen)
        if overlay == active:
            set_active(member.locator, frozen)
        os.unlink(overlay)
        return True
