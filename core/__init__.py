"""snaptree: point-in-time snapshots of VM disks and volumes through pluggable backends.

Plugin authors import :data:`hookimpl` (and, if they like,
:class:`VolumeBackend`) from here; toolstacks use :class:`Snaptree`.
"""

from .api import Snaptree
from .backend import VolumeBackend
from .errors import SnaptreeError
from .markers import hookimpl, hookspec
from .model import (
    BackendInfo,
    Capabilities,
    Group,
    MemberSnapshot,
    MemoryState,
    OpContext,
    RevertFailed,
    Snapshot,
    SnapshotState,
    SpaceUsage,
    Volume,
)

__version__ = "0.1.0"

__all__ = [
    "Snaptree",
    "VolumeBackend",
    "SnaptreeError",
    "hookimpl",
    "hookspec",
    "BackendInfo",
    "Capabilities",
    "Group",
    "MemberSnapshot",
    "MemoryState",
    "OpContext",
    "RevertFailed",
    "Snapshot",
    "SnapshotState",
    "SpaceUsage",
    "Volume",
    "__version__",
]
