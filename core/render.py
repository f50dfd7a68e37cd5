"""Turning snapshots, groups and reports into JSON-safe dicts and text."""

from __future__ import annotations

import datetime
from typing import Any

from .model import Group, Snapshot

__all__ = ["group_dict", "snapshot_dict", "tree_lines", "when"]


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def group_dict(group: Group, snapshot_count: int | None = None) -> dict[str, Any]:
    out = {"name": group.name, "volumes": [v.spec for v in group.volumes],
           "qmp_socket": group.qmp_socket, "options": dict(group.options),
           "created": group.created, "current": group.current}
    if snapshot_count is not None:
        out["snapshots"] = snapshot_count
    return out


def snapshot_dict(snap: Snapshot, current: str | None) -> dict[str, Any]:
    """``snap`` as JSON; ``current`` is the name of its group's current snapshot."""
    out = {"name": snap.name, "id": snap.snapshot_id, "group": snap.group, "parent": snap.parent,
           "created": snap.created, "description": snap.description, "state": snap.state.value,
           "memory": None if snap.memory is None else {"kind": snap.memory.kind, "ref": snap.memory.ref,
                                                       "size_bytes": snap.memory.size_bytes},
           "members": [{"volume": m.volume.spec, "ref": m.ref, "size_bytes": m.size_bytes,
                        "valid": m.valid, "data": dict(m.data)} for m in snap.members],
           "current": snap.name == current}
    return out


def tree_lines(nodes: list[dict[str, Any]], prefix: str = "") -> list[str]:
    lines = []
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        mark = " *" if node["current"] else ""
        desc = f"  ({node['description']})" if node.get("description") else ""
        lines.append(f"{prefix}{'└── ' if last else '├── '}{node['name']}{mark}{desc}")
        lines.extend(tree_lines(node["children"], prefix + ("    " if last else "│   ")))
    return lines
