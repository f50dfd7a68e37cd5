"""Where volumes lie on disk, whether two of them overlap, and the refusal
of a new volume that overlaps a registered one (:func:`refuse_overlaps`).

A backend names the paths a volume and its snapshots occupy
(:func:`snaptree.hookspecs.snaptree_volume_footprint`): the volume's own
path first, then its snapshot folders and temporary names.  Two volumes
overlap when a path of one is a path of the other or lies below it.  Paths
are compared by what they are, not by how they are spelt: each path is
turned into the identities of itself and every directory above it
(``st_dev``/``st_ino``; a block device by the device it opens), so a
symlink, a hard link or a bind mount of the same place is found.  A path
that does not exist yet (a snapshot folder made by the first snapshot)
is known by its nearest existing directory and the names below that.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Hashable, Sequence

from .errors import Conflict, PluginError, SnaptreeError
from .model import Volume

__all__ = ["Places", "footprint_of", "refuse_overlaps"]


def _identity(found: os.stat_result) -> Hashable:
    if stat.S_ISBLK(found.st_mode):
        return ("block", found.st_rdev)  # /dev/vg/lv, /dev/dm-3, /dev/mapper/vg-lv alike
    return ("inode", found.st_dev, found.st_ino)


def _kind(found: os.stat_result | None) -> str:
    if found is None:
        return "path"
    if stat.S_ISBLK(found.st_mode):
        return "device"
    return "directory" if stat.S_ISDIR(found.st_mode) else "file"


class Places:
    """Identities of paths, each looked up once per instance (one check)."""

    def __init__(self) -> None:
        self._chains: dict[str, tuple[Hashable, ...]] = {}
        self._stats: dict[str, os.stat_result | None] = {}

    def _stat(self, path: str) -> os.stat_result | None:
        if path not in self._stats:
            try:
                self._stats[path] = os.stat(path)
            except (OSError, ValueError):
                self._stats[path] = None
        return self._stats[path]

    def chain(self, path: str) -> tuple[Hashable, ...]:
        """The identity of ``path``, then of each directory above it, up to ``/``."""
        if path in self._chains:
            return self._chains[path]
        here = os.path.realpath(path)
        missing: list[str] = []  # names below the nearest existing directory, nearest first
        while self._stat(here) is None and here != os.path.dirname(here):
            missing.append(os.path.basename(here))
            here = os.path.dirname(here)
        found = self._stat(here)
        anchor = _identity(found) if found is not None else ("path", here)
        keys: list[Hashable] = [("below", anchor, "/".join(reversed(missing[i:])))
                                for i in range(len(missing))]
        keys.append(anchor)
        while here != os.path.dirname(here):
            here = os.path.dirname(here)
            above = self._stat(here)
            keys.append(_identity(above) if above is not None else ("path", here))
        self._chains[path] = tuple(keys)
        return self._chains[path]

    def overlap(self, mine: Sequence[str], theirs: Sequence[str]) -> str | None:
        """How two footprints meet (``"/a/d.img is inside /a"``), or ``None``.

        A path stands for itself and everything below it, so a path of one
        that is a path of the other, or lies below one, is an overlap.
        """
        for one in mine:
            for other in theirs:
                one_chain, other_chain = self.chain(one), self.chain(other)
                if one_chain[0] == other_chain[0]:
                    if os.path.realpath(one) == os.path.realpath(other):
                        return f"both use {other}"
                    kind = _kind(self._stat(os.path.realpath(other)))
                    return f"{one} and {other} are the same {kind}"
                if other_chain[0] in one_chain:
                    return f"{one} is inside {other}"
                if one_chain[0] in other_chain:
                    return f"{other} is inside {one}"
        return None


def footprint_of(hook: Any, volume: Volume, group_name: str | None = None) -> list[str] | None:
    """The paths ``volume`` (of group ``group_name``) and its snapshots
    occupy, or ``None`` when its backend does not say (or is not installed)."""
    where = f"cannot tell where volume {volume.spec}" + (
        f" (group {group_name!r})" if group_name is not None else "") + " lies"
    try:
        paths = hook.snaptree_volume_footprint(backend=volume.backend, volume=volume)
    except SnaptreeError as err:
        err.message = f"{where}: {err.one_line()}"
        raise
    except Exception as err:
        raise PluginError(f"{where}: backend {volume.backend!r} raised "
                          f"{type(err).__name__}: {err}") from err
    if paths is None:
        return None
    if isinstance(paths, str) or not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
        raise PluginError(f"backend {volume.backend!r} answered snaptree_volume_footprint "
                          f"for {volume.spec} with {paths!r}, not a list of absolute paths")
    return list(paths)


def refuse_overlaps(catalog: Any, hook: Any, group_name: str, volumes: Sequence[Volume]) -> None:
    """Refuse (:class:`~snaptree.errors.Conflict`) a volume already in a
    group, or whose storage overlaps that of a volume registered in
    ``catalog`` (any group) or of another of ``volumes``, all joining
    ``group_name``: the same file or device, one inside the other's tree or
    snapshot storage.  A revert of one would destroy the other's data or
    snapshots.  Call under the lock the registering caller holds, so that
    two callers cannot both pass."""
    for volume in volumes:
        owner = catalog.volume_owner(volume.spec)
        if owner is not None:
            raise Conflict(f"volume {volume.spec} already belongs to group {owner!r}")
    registered = [(group.name, volume) for group in map(catalog.get_group, catalog.group_names())
                  if group is not None for volume in group.volumes]
    places = Places()
    footprints: dict[Volume, list[str] | None] = {}
    for index, volume in enumerate(volumes):
        mine = footprints[volume] = footprint_of(hook, volume, group_name)
        if not mine:
            continue  # the backend does not say: its spec was compared above
        for owner, other in registered + [(group_name, v) for v in volumes[:index]]:
            if other not in footprints:
                footprints[other] = footprint_of(hook, other, owner)
            theirs = footprints[other]
            how = places.overlap(mine, theirs) if theirs else None
            if how is not None:
                raise Conflict(
                    f"volume {volume.spec} (group {group_name!r}) overlaps volume {other.spec} "
                    f"of group {owner!r} ({how}): a revert of either would destroy the other's "
                    "data or snapshots")
