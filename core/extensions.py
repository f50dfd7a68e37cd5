"""Commands whose work a backend plugin provides (``map``/``unmap`` for LVM).

A plugin offers them by implementing the optional hooks
``snaptree_map_snapshot`` / ``snaptree_unmap_snapshot``
(see :mod:`snaptree.hookspecs`).
"""

from __future__ import annotations

from typing import Any

from .errors import NotSupported

__all__ = ["run_mapping"]


def run_mapping(api, command: str, group: str, name: str) -> tuple[Any, list[str]]:
    snap = api.info(group, name)
    hook = api.plugins.hook
    results = []
    for member in snap.members:
        fn = hook.snaptree_map_snapshot if command == "map" else hook.snaptree_unmap_snapshot
        answer = fn(backend=member.backend, member=member)
        if answer is None:
            raise NotSupported(f"backend {member.backend!r} cannot {command} snapshots")
        results.append({"volume": member.volume.spec, "devices": list(answer)})
    lines = []
    for r in results:
        lines.append(f"{r['volume']}:")
        lines += [f"  {d}" for d in r["devices"]] or ["  (no partitions)"]
    return results, lines
