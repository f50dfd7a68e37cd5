"""qcow2 snapshots through a running QEMU, over QMP.

Every qcow2 disk of a group that one QEMU owns is snapshotted in one QMP
``transaction``: QEMU prepares every action before committing any, so the
group gets all its member snapshots or none.  Block nodes are found by the
file of the volume's active image; after an external snapshot that is the
new overlay, so internal snapshots then land in the new top node.

Finding the nodes is most of snaptree's own cost on a live create: the
guest devices' top nodes (``query-block``, cheap) are asked first, every
named node (``query-named-block-nodes``, a few milliseconds with many disks)
when devices do not hold the images, as on a ``qemu-storage-daemon``.  The
nodes found are remembered per QEMU process (socket path and pid); an
internal snapshot then goes straight to them and is checked afterwards in
the images themselves: an image the transaction changed (its times or size,
from ``stat``) was written by QEMU; any other is read (:mod:`.header`) for
the tag.  Should a node name have moved to another image meanwhile, the
misplaced tags are deleted and the snapshot is taken again with fresh
nodes: still one transaction for the group.  (A group image written by
someone else during the transaction while its node name stands for another
image would pass this check; QEMU holding an image through a second node
name, written by the guest, is the only way there.)
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, ContextManager, Mapping, Sequence

from snaptree import faults
from snaptree.errors import BackendError, NotSupported, QMPFailed
from snaptree.model import MemberSnapshot, Volume

from . import bases
from .header import read_header, snapshot_names
from .layout import active_image, adopt, make_snapshot_dir, overlay_path, set_active
from .offline import Chain, discard_unused, external_member, internal_member
from .qemuimg import QemuImg
from .qmp import QMPSession

__all__ = ["LiveOps", "block_nodes", "forget_nodes"]

#: (socket path, QEMU pid) -> {image file: node name} found by the last lookups
_remembered: dict[tuple[str, int], dict[str, str]] = {}
#: QEMU processes whose guest devices did not hold our images: ask for every node
_without_devices: set[tuple[str, int]] = set()


def forget_nodes() -> None:
    """Drop every remembered node name (tests; a long-lived process may too)."""
    _remembered.clear()
    _without_devices.clear()


def block_nodes(session: QMPSession) -> dict[str, str]:
    """Map image file -> node name of every qcow2 format node QEMU has open."""
    nodes: dict[str, str] = {}
    # flat: no nested backing-chain records, which grow with every snapshot
    for node in session.execute("query-named-block-nodes", {"flat": True}):
        if node.get("drv") == "qcow2" and node.get("file"):
            nodes.setdefault(os.path.realpath(node["file"]), node["node-name"])
    return nodes


def _device_nodes(session: QMPSession) -> dict[str, str]:
    """Map image file -> node name of the qcow2 top node of every guest device."""
    nodes: dict[str, str] = {}
    for device in session.execute("query-block"):
        inserted = device.get("inserted") or {}
        if inserted.get("drv") == "qcow2" and inserted.get("file") and inserted.get("node-name"):
            nodes.setdefault(inserted["file"], inserted["node-name"])
    return nodes


def _match(nodes: dict[str, str], files: Sequence[str]) -> list[str | None]:
    """The node of each file; names QEMU spells differently are compared resolved."""
    found = [nodes.get(f) for f in files]
    if None in found:
        resolved: dict[str, str] = {}
        for path, node in nodes.items():
            resolved.setdefault(os.path.realpath(path), node)
        found = [node or resolved.get(f) for f, node in zip(files, found)]
    return found


#: what :func:`stamp_of` returns
Stamp = tuple[int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    """What a write to a file changes: its modification and change times, its size."""
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size


def _stamp(path: str) -> Stamp | None:
    """:func:`stamp_of` ``path``, ``None`` when it cannot be read.  The inode
    is cached: no disk read."""
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None


def _runs_as_another_user(session: QMPSession) -> bool:
    """True when the QEMU behind ``session`` runs as a user other than snaptree's.

    The socket's peer credentials are those of whoever made it listen; a
    QEMU started with ``-runas`` drops root afterwards, so its process is
    asked what it is now.  Unknown counts as "same user" (the transaction
    then says "Permission denied" and the caller retries).
    """
    pid, uid = session.peer_pid, session.peer_uid
    if pid:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        uid = int(line.split()[2])  # effective
                        break
        except (OSError, ValueError, IndexError):
            pass
    return uid is not None and uid != os.geteuid()


def _rests_on(chain: Chain, image: str, base: str) -> bool:
    """True when ``image`` is ``base`` or built on it (through its backing files)."""
    seen: set[str] = set()
    while image is not None and image not in seen:
        if image == base:
            return True
        seen.add(image)
        image = chain.backing.get(image)  # type: ignore[assignment]
    return False


def _running_top(chain: Chain, nodes: Mapping[str, str], image: str) -> str:
    """The image QEMU runs on above ``image``: up its held children while there is one."""
    seen = {image}
    while True:
        held = [c for c in chain.children(image) if c in nodes and c not in seen]
        if len(held) != 1:
            return image
        image = held[0]
        seen.add(image)


def _node_name(snapshot_id: str, index: int) -> str:
    # node names: a letter first, at most 31 characters
    return f"st{snapshot_id}n{index}"


class LiveOps:
    """Operations on the disks of one running QEMU, one QMP session each."""

    def __init__(self, qemu_img: QemuImg, socket_path: str, *, shared: QMPSession | None = None):
        self.qemu_img = qemu_img
        self.socket_path = socket_path
        self.shared = shared

    def session(self) -> ContextManager[QMPSession]:
        """A connection for one step: the operation's shared one (left open), or a new one."""
        if self.shared is not None:
            return contextlib.nullcontext(self.shared)
        return QMPSession(self.socket_path)

    def top_nodes(self, session: QMPSession, volumes: Sequence[Volume],
                  actives: Sequence[str] | None = None) -> list[str]:
        """Node name of each volume's active image; raise when QEMU does not hold it.

        Always asks QEMU (and remembers the answer); ``actives`` are the
        volumes' active images when the caller has read them already.
        """
        if actives is None:
            actives = [active_image(v.locator) for v in volumes]
        found = self._find(session, actives)
        for volume, active, node in zip(volumes, actives, found):
            if node is None:
                raise BackendError(
                    f"qcow2: the QEMU at {self.socket_path} has no block node for {active} "
                    f"(the active image of {volume.locator})")
        return found  # type: ignore[return-value]

    def _find(self, session: QMPSession, actives: Sequence[str]) -> list[str | None]:
        key = (self.socket_path, session.peer_pid or 0)
        found: list[str | None] | None = None
        if key not in _without_devices:
            found = _match(_device_nodes(session), actives)
            if None in found:  # not (all) on guest devices: a storage daemon, exports
                _without_devices.add(key)
                found = None
        if found is None:
            found = _match(block_nodes(session), actives)
        if key[1]:
            if key not in _remembered:  # a QEMU that went away leaves nothing true behind
                for old in [k for k in _remembered if k[0] == self.socket_path]:
                    del _remembered[old]
            known = _remembered.setdefault(key, {})
            known.update((a, n) for a, n in zip(actives, found) if n is not None)
        return found

    def _recall(self, session: QMPSession, actives: Sequence[str]) -> list[str] | None:
        """The remembered node of each active image, or None if one is not known."""
        pid = session.peer_pid
        known = _remembered.get((self.socket_path, pid)) if pid else None
        if not known:
            return None
        found = [known.get(a) for a in actives]
        return None if None in found else found  # type: ignore[return-value]

    # -- snapshot -------------------------------------------------------------

    def snapshot(self, session: QMPSession, volumes: Sequence[Volume], snapshot_id: str,
                 mode: str, *, actives: Mapping[str, str] | None = None,
                 stamps: Mapping[str, Stamp] | None = None) -> list[MemberSnapshot]:
        """Snapshot ``volumes`` in one transaction; ``actives`` maps each locator
        to its active image when the caller has read them under the group's
        lock, ``stamps`` each active image to its :func:`stamp_of` taken then."""
        actives = [actives[v.locator] if actives and v.locator in actives
                   else active_image(v.locator) for v in volumes]
        if mode == "internal":
            tops = self._recall(session, actives)
            if tops is not None:
                members = self._internal_on_recalled(session, volumes, actives, tops, snapshot_id,
                                                     stamps or {})
                if members is not None:
                    return members
        tops = self.top_nodes(session, volumes, actives)
        actions: list[dict[str, Any]] = []
        members: list[MemberSnapshot] = []
        for index, (volume, node, active) in enumerate(zip(volumes, tops, actives)):
            if mode == "internal":
                actions.append({"type": "blockdev-snapshot-internal-sync",
                                "data": {"device": node, "name": snapshot_id}})
                members.append(internal_member(volume, snapshot_id, active))
            else:
                make_snapshot_dir(volume.locator)
                actions.append({"type": "blockdev-snapshot-sync",
                                "data": {"node-name": node,
                                         "snapshot-file": overlay_path(volume.locator, snapshot_id),
                                         "snapshot-node-name": _node_name(snapshot_id, index),
                                         "format": "qcow2", "mode": "absolute-paths"}})
                members.append(external_member(volume, snapshot_id, active))
        made = False
        if mode == "external" and _runs_as_another_user(session):
            self._make_overlays(session, volumes, actives, members, actions)
            made = True
        try:
            # No completion-mode "grouped": QEMU 7.2 refuses it for snapshot
            # actions (it concerns backup jobs only); the transaction itself
            # prepares every action before committing any.
            session.execute("transaction", {"actions": actions})
        except QMPFailed as err:
            if mode == "external":  # QEMU leaves the overlay files it created
                self._remove_unused_overlays(session, members)
            if mode != "external" or made or "Permission denied" not in str(err):
                raise
            # A QEMU whose user the socket does not tell (it dropped root
            # after listening, or a toolstack made the socket): snaptree
            # makes the overlays, QEMU opens them.
            self._make_overlays(session, volumes, actives, members, actions)
            try:
                session.execute("transaction", {"actions": actions})
            except QMPFailed:
                self._remove_unused_overlays(session, members)
                raise
        if mode == "external":
            faults.checkpoint("qcow2:unstamped")  # QEMU runs on the overlays; nothing noted yet
            # QEMU holds each image below read-only now, and nothing else
            # can write it while QEMU runs: its stamp tells recover whether
            # it was written after (see .bases)
            for volume, active in zip(volumes, actives):
                bases.record(volume.locator, snapshot_id, active)
            faults.checkpoint("qcow2:switched")  # QEMU runs on the overlays; 'active' says not yet
            for volume, member in zip(volumes, members):
                set_active(volume.locator, member.data["overlay"])
                bases.forget(volume.locator, snapshot_id)
        return members

    def _make_overlays(self, session: QMPSession, volumes: Sequence[Volume],
                       actives: Sequence[str], members: Sequence[MemberSnapshot],
                       actions: list[dict[str, Any]]) -> None:
        """Create the overlays for a QEMU that runs as another user.

        Such a QEMU cannot create files in the volume's folder (it stays
        snaptree's, see :func:`.layout.make_snapshot_dir`): snaptree makes
        each overlay with the image's owner and mode, and the transaction
        only opens them (``mode: existing``).  Made ones are removed again
        when one cannot be made.
        """
        made: list[MemberSnapshot] = []
        try:
            for volume, active, member, action in zip(volumes, actives, members, actions):
                header = read_header(active)  # QEMU holds the image: read, never open it
                size = header.size if header is not None else self.qemu_img.info(active)["virtual-size"]
                made.append(member)
                self.qemu_img.create_overlay(member.data["overlay"], active, size)
                adopt(volume.locator, member.data["overlay"])
                action["data"]["mode"] = "existing"
        except BaseException:
            self._remove_unused_overlays(session, made)
            raise
        faults.checkpoint("qcow2:overlays-made")

    def _internal_on_recalled(self, session: QMPSession, volumes: Sequence[Volume],
                              actives: Sequence[str], tops: list[str], snapshot_id: str,
                              known: Mapping[str, Stamp]) -> list[MemberSnapshot] | None:
        """Snapshot into remembered nodes; None when they proved stale (nothing is left made).

        ``known``: stamps of active images taken earlier under the group's
        lock; a guest write since then makes an image count as written by
        the transaction, as a write during it does.
        """
        actions = [{"type": "blockdev-snapshot-internal-sync",
                    "data": {"device": node, "name": snapshot_id}} for node in tops]
        stamps = [known[a] if a in known else _stamp(a) for a in actives]
        try:
            session.execute("transaction", {"actions": actions})
        except QMPFailed:
            if self._find(session, actives) == tops:
                raise  # the nodes are right: QEMU refused for another reason
            return None  # a transaction fails whole: nothing to clean up
        members = [internal_member(v, snapshot_id, a) for v, a in zip(volumes, actives)]
        # An image QEMU wrote during the transaction is the one its node
        # stands for (writing a snapshot changes the file).  Only images that
        # look untouched are read; reading is what costs with cache=none,
        # where QEMU's O_DIRECT writes leave nothing in the page cache.
        untouched = [a for a, before in zip(actives, stamps) if before is None or _stamp(a) == before]
        if all(snapshot_id in (snapshot_names(a) or ()) for a in untouched):
            return members  # every tag is in the image it was meant for
        if self._find(session, actives) == tops:
            return members  # an image we could not read; QEMU vouches for the nodes
        # A remembered node name now stands for another image: take back
        # every tag of this transaction and let the caller start afresh.
        left = []
        for node in tops:
            try:
                session.execute("blockdev-snapshot-delete-internal-sync",
                                {"device": node, "name": snapshot_id})
            except QMPFailed as err:
                left.append(f"{node}: {err}")
        if left:
            raise BackendError(
                f"qcow2: QEMU at {self.socket_path} gave its block nodes to other images since "
                f"snaptree last looked, and tag {snapshot_id} could not be removed from: "
                f"{'; '.join(left)}")
        return None

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

    def delete_internal(self, session: QMPSession, member: MemberSnapshot,
                        chain: Chain | None = None) -> bool:
        """Delete an internal snapshot in a node QEMU has open; False if QEMU does not hold it.
        ``chain``: the volume's chain if the caller read it already."""
        nodes = block_nodes(session)
        if chain is None:
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
                        progress: Callable[..., None], chain: Chain | None = None) -> bool:
        """Merge the snapshot's overlay down with ``block-commit``; False if QEMU does not hold it.
        ``chain``: the volume's chain if the caller read it already."""
        overlay = overlay_path(member.locator, member.snapshot_id)
        nodes = block_nodes(session)
        if overlay not in nodes:
            return False
        if chain is None:
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
        if not _rests_on(chain, active, overlay):
            # 'active' names an image below the overlay: a create was stopped
            # after QEMU switched to the overlay, before snaptree wrote that
            # down.  QEMU's own top above the overlay is the one to commit from.
            active = _running_top(chain, nodes, overlay)
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
        bases.forget(member.locator, member.snapshot_id)
        discard_unused(self.qemu_img, member.locator)
        return True
