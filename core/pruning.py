"""Which snapshots ``prune`` deletes, and in what order.

Kept: the N newest complete snapshots and the group's current one; every
other complete snapshot goes.  They go newest first, and never before a
snapshot below them in the tree that goes too: a backend may refuse to
delete a snapshot while one taken on top of it exists (a qcow2 external
snapshot's overlay holds the internal snapshots taken after it).  A child
is younger than its parent, so newest first already is that order unless
the clock was set back between them; the tree decides then.  Deleting
children first also leaves the same tree as any other order: each kept
snapshot ends up below its nearest kept ancestor.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Collection, Sequence

from .model import Snapshot, SnapshotState

__all__ = ["prune_order"]


def prune_order(snapshots: Sequence[Snapshot], keep: int, current_id: str | None,
                spared: Collection[str] = ()) -> list[Snapshot]:
    """The snapshots ``prune`` deletes, in the order it deletes them.

    :param snapshots: every snapshot of the group, oldest first (as
        :meth:`Catalog.list_snapshots` gives them), any state.
    :param keep: how many of the newest complete snapshots stay.
    :param current_id: the group's current snapshot, which stays too.
    :param spared: ids of other snapshots that stay (the target of a revert
        left unfinished, which ``recover`` still needs).
    """
    place = {s.snapshot_id: index for index, s in enumerate(snapshots)}
    complete = [s for s in snapshots if s.state is SnapshotState.COMPLETE]
    kept = {s.snapshot_id for s in complete[::-1][:keep]}
    doomed = {s.snapshot_id: s for s in complete
              if s.snapshot_id not in kept and s.snapshot_id != current_id
              and s.snapshot_id not in spared}
    above = _nearest_above(snapshots, doomed)
    waiting = Counter(sid for sid in above.values() if sid is not None)
    ready = [(-place[sid], sid) for sid in doomed if not waiting[sid]]
    heapq.heapify(ready)
    order: list[Snapshot] = []
    while ready:
        _, sid = heapq.heappop(ready)
        order.append(doomed[sid])
        parent = above[sid]
        if parent is not None:
            waiting[parent] -= 1
            if not waiting[parent]:
                heapq.heappush(ready, (-place[parent], parent))
    if len(order) < len(doomed):  # parents in a loop, which only a broken catalog has
        placed = {s.snapshot_id for s in order}
        order += [s for s in complete[::-1] if s.snapshot_id in doomed and s.snapshot_id not in placed]
    return order


def _nearest_above(snapshots: Sequence[Snapshot], marked: dict[str, Snapshot]) -> dict[str, str | None]:
    """For each marked snapshot, the nearest marked one above it in the tree
    (``None``: none); walked without recursion, each snapshot once."""
    by_name = {s.name: s for s in snapshots}
    found: dict[str, str | None] = {}

    def parent_of(snap: Snapshot) -> Snapshot | None:
        return by_name.get(snap.parent) if snap.parent is not None else None

    out: dict[str, str | None] = {}
    for sid, snap in marked.items():
        path: dict[str, None] = {}  # the unmarked snapshots passed, in order
        node = parent_of(snap)
        answer = None
        while node is not None:
            if node.snapshot_id in marked:
                answer = node.snapshot_id
                break
            if node.snapshot_id in found:
                answer = found[node.snapshot_id]
                break
            if node.snapshot_id in path:  # a loop only a broken catalog has
                break
            path[node.snapshot_id] = None
            node = parent_of(node)
        for step in path:
            found[step] = answer
        out[sid] = answer
    return out
