"""Plain data classes shared by the coordinator, the catalog and backends."""

from __future__ import annotations

import enum
from typing import Any, Callable, Mapping

import attrs

__all__ = [
    "Capabilities",
    "BackendInfo",
    "Volume",
    "Group",
    "MemberSnapshot",
    "MemoryState",
    "Snapshot",
    "SnapshotState",
    "OpContext",
    "SpaceUsage",
    "RevertFailed",
]


@attrs.frozen
class Capabilities:
    """What a backend can do.  The coordinator acts on ``atomic_batch``,
    ``revert_to_any`` and ``needs_root`` (see
    :func:`snaptree.hookspecs.snaptree_backends`); the rest informs users."""

    #: Can snapshot a volume while a VM is writing to it (through QMP, say).
    live: bool = False
    #: Snapshots live inside the volume itself (qcow2 internal snapshots).
    internal: bool = False
    #: Snapshots are separate objects (a file copy, an overlay, a subvolume, an LV).
    external: bool = True
    #: Snapshots are kept read-only.
    read_only: bool = False
    #: Revert to any snapshot, not only the newest, keeping the others.
    revert_to_any: bool = True
    #: Several volumes of one group are snapshotted as one atomic batch.
    atomic_batch: bool = False
    #: Can save and restore VM memory state with a snapshot.
    memory_state: bool = False
    #: Needs root (loop devices, device-mapper, subvolume ioctls).
    needs_root: bool = False

    def as_dict(self) -> dict[str, bool]:
        return attrs.asdict(self)


@attrs.frozen
class BackendInfo:
    """A backend's registration, yielded by ``snaptree_backends``."""

    name: str
    description: str
    capabilities: Capabilities = attrs.field(factory=Capabilities)
    #: Programs the backend runs; ``snaptree backends`` reports missing ones.
    required_tools: tuple[str, ...] = ()
    #: Distribution / plugin name that registered it, filled by the manager.
    provider: str = ""


@attrs.frozen
class Volume:
    """One volume, addressed as ``BACKEND:LOCATOR``.

    ``locator`` is normalised by the backend that claims it (absolute paths,
    ``vg/lv``); ``spec`` is the canonical form kept in the catalog.
    """

    backend: str
    locator: str

    @property
    def spec(self) -> str:
        return f"{self.backend}:{self.locator}"


@attrs.frozen
class Group:
    """A named set of volumes snapshotted together (all disks of one VM)."""

    name: str
    volumes: tuple[Volume, ...]
    #: QMP socket of the QEMU that owns the volumes, if it runs.
    qmp_socket: str | None = None
    #: Per-group backend options, e.g. ``{"qcow2.mode": "external"}``.
    options: Mapping[str, Any] = attrs.field(factory=dict)
    created: float = 0.0
    current: str | None = None  # name of the current snapshot
    current_id: str | None = None  # and its id
    #: When each volume added after the group was made joined it (spec ->
    #: time): snapshots taken before that have no member on it.
    joined: Mapping[str, float] = attrs.field(factory=dict)

    def predates(self, snapshot_created: float, spec: str) -> bool:
        """True when a snapshot taken at ``snapshot_created`` is older than volume ``spec``."""
        joined = self.joined.get(spec)
        return joined is not None and snapshot_created < joined


class SnapshotState(str, enum.Enum):
    """The life of a snapshot in the catalog."""

    PENDING = "pending"      # intent journaled, members being made
    COMPLETE = "complete"
    FAILED = "failed"        # undone; kept as a record only when asked
    DELETING = "deleting"    # members being removed


@attrs.frozen
class MemberSnapshot:
    """One volume's part of a group snapshot, as the backend describes it.

    ``snapshot_id`` ties the member to its group snapshot and is part of every
    name a backend gives its storage objects, so ``snaptree_list`` can find
    orphans after a crash.  ``data`` is backend-private and must be JSON-safe.
    """

    backend: str
    locator: str
    snapshot_id: str
    #: Where the member lives: a path, an LV name, a qcow2 snapshot tag.
    ref: str
    size_bytes: int | None = None
    valid: bool = True
    data: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def volume(self) -> Volume:
        return Volume(self.backend, self.locator)


@attrs.frozen
class MemoryState:
    """Where a snapshot's VM memory went (inside a qcow2, or a file)."""

    kind: str          # "internal" or "file"
    ref: str           # qcow2 snapshot tag or path of the memory file
    size_bytes: int | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Snapshot:
    """A group snapshot: one member per volume, a place in the tree."""

    snapshot_id: str
    group: str
    name: str
    parent: str | None
    created: float
    description: str
    state: SnapshotState
    members: tuple[MemberSnapshot, ...] = ()
    memory: MemoryState | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class SpaceUsage:
    """Space a member snapshot holds, as exactly as the backend can tell."""

    exclusive_bytes: int | None = None
    referenced_bytes: int | None = None


def _no_progress(done: int, total: int | None = None, label: str = "") -> None:
    return None


@attrs.define
class OpContext:
    """Everything a backend hook gets to know about the operation at hand."""

    group: Group
    snapshot_id: str
    #: for messages only: ``snaptree edit`` can rename a snapshot, its id stays
    snapshot_name: str
    #: Merged group options and per-operation options (e.g. ``mode``, ``memory``).
    options: dict[str, Any] = attrs.field(factory=dict)
    #: ``progress(done, total, label)``; cheap to call often.
    progress: Callable[..., None] = _no_progress
    #: Backends may stash data here for later hooks of the same operation.
    #: ``scratch["warnings"]`` is a list: lines appended there reach the user
    #: (``snaptree: warning: ...``) when the operation ends.
    scratch: dict[str, Any] = attrs.field(factory=dict)
    #: The plugin manager's hook relay, to call other plugins' hooks (as
    #: pytest's ``config.hook``); ``None`` outside a coordinator.
    hook: Any = None

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@attrs.frozen
class RevertFailed:
    """A line of :func:`~snaptree.hookspecs.snaptree_recover_volume`: a revert
    that ended successfully for the coordinator did not happen on this volume.

    For backends that may finish a revert after it returned (LVM defers the
    merge into an open volume) and find later that it can never run.
    ``recover`` reports ``message`` like any other line and, when the group's
    current snapshot is still ``snapshot_id`` from that revert, makes the
    snapshot that was current before it current again.
    """

    #: the id of the snapshot the failed revert went back to
    snapshot_id: str
    #: what happened, for the user
    message: str

    def __str__(self) -> str:
        return self.message
