"""The state one benchmark session shares: a Snaptree, the variants, volumes.

Volumes are expensive (a 1 GiB fill takes seconds), so the lab keeps the
last set it made and hands it to every benchmark asking for the same key
``(variant, size, volumes, files)``; the cases are ordered so each key is
made once.  Snapshots a benchmark takes are gone when it returns.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import attrs

from snaptree import Snaptree

from .builtin import builtin_provisioners
from .config import Plan
from .provision import BenchVolume, Primitive, Provisioner, Variant, discover

__all__ = ["Lab", "Case", "VolumeSet", "SnaptreeOps", "PrimitiveOps"]

log = logging.getLogger("snaptree.bench")


@attrs.frozen
class Case:
    """One timed benchmark: an operation by one actor on one volume set."""

    variant: str
    op: str          # create | revert | delete
    actor: str       # "snaptree", "primitive" or a comparator name
    size_mib: int
    volumes: int
    files: int

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.variant, self.size_mib, self.volumes, self.files)

    @property
    def id(self) -> str:
        files = f"-{self.files}files" if self.files else ""
        return f"{self.variant}-{self.size_mib}MiB-x{self.volumes}{files}-{self.op}-{self.actor}"


@attrs.define
class VolumeSet:
    """Fresh volumes registered as one snaptree group."""

    key: tuple[str, int, int, int]
    group: str
    volumes: list[BenchVolume]


class SnaptreeOps:
    """create / revert / delete through the snaptree API, for a whole group."""

    label = "snaptree"
    revert_consumes = False

    def __init__(self, snaptree: Snaptree, vset: VolumeSet):
        self.snaptree, self.group = snaptree, vset.group

    def create(self, tag: str) -> None:
        self.snaptree.create(self.group, tag)

    def revert(self, tag: str) -> None:
        self.snaptree.revert(self.group, tag)

    def delete(self, tag: str) -> None:
        self.snaptree.delete(self.group, tag)


class PrimitiveOps:
    """The same three operations by a bare primitive, one volume after another."""

    def __init__(self, primitive: Primitive, vset: VolumeSet):
        self.primitive, self.volumes = primitive, vset.volumes
        self.label = primitive.label
        self.revert_consumes = bool(getattr(primitive, "revert_consumes", False))

    def create(self, tag: str) -> None:
        for volume in self.volumes:
            self.primitive.create(volume, tag)

    def revert(self, tag: str) -> None:
        for volume in self.volumes:
            self.primitive.revert(volume, tag)

    def delete(self, tag: str) -> None:
        for volume in self.volumes:
            self.primitive.delete(volume, tag)


class Lab:
    """Variants, their started storage, and the current volume set."""

    def __init__(self, plan: Plan, workdir: str, *, plugins: Sequence[object] = ()):
        self.plan = plan
        self.workdir = workdir
        self.snaptree = Snaptree(os.path.join(workdir, "state"), plugins=plugins)
        self.variants: list[Variant] = discover(self.snaptree, builtin_provisioners())
        self.started: dict[str, Provisioner] = {}
        self.current: VolumeSet | None = None
        self.counter = 0
        #: Results that are not timings (space per snapshot), for the report.
        self.records: list[dict[str, Any]] = []

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def runnable(self) -> list[Variant]:
        return [v for v in self.variants if v.skipped is None]

    def provisioner(self, name: str) -> Provisioner:
        if name not in self.started:
            prov = self.variant(name).provisioner
            assert prov is not None
            prov.start(self.workdir)
            self.started[name] = prov
        return self.started[name]

    def actor(self, name: str, vset: VolumeSet, variant: str):
        if name == "snaptree":
            return SnaptreeOps(self.snaptree, vset)
        prov = self.provisioner(variant)
        primitive = prov.primitive if name == "primitive" else prov.comparators[name]
        return PrimitiveOps(primitive, vset)

    def volume_set(self, key: tuple[str, int, int, int], *, fresh: bool = False) -> VolumeSet:
        """The volumes for ``key``, made on first request (always, with ``fresh``)."""
        if self.current is not None and self.current.key == key and not fresh:
            return self.current
        self.release()
        variant, size_mib, count, files = key
        prov = self.provisioner(variant)
        volumes = []
        self.counter += 1
        group = f"bench{self.counter}"
        try:
            for index in range(count):
                volumes.append(prov.make_volume(f"{group}v{index}", size_mib, files))
            self.snaptree.create_group(group, [v.spec for v in volumes],
                                       options=dict(prov.group_options))
            # data a provisioner left in the page cache must not be flushed
            # by the first timed fsync, or that round pays for the fill
            os.sync()
        except BaseException:
            self._cleanup(prov, volumes)
            raise
        self.current = VolumeSet(key, group, volumes)
        return self.current

    def release(self) -> None:
        """Forget the current volume set: its group, snapshots and volumes."""
        vset, self.current = self.current, None
        if vset is None:
            return
        prov = self.started[vset.key[0]]
        try:
            self.snaptree.delete_group(vset.group, with_snapshots=True)
        except Exception as err:
            log.warning("could not delete benchmark group %s: %s", vset.group, err)
        self._cleanup(prov, vset.volumes)

    @staticmethod
    def _cleanup(prov: Provisioner, volumes: list[BenchVolume]) -> None:
        for volume in volumes:
            for comparator in (prov.comparators or {}).values():
                release = getattr(comparator, "release", None)
                if release is not None:
                    try:
                        release(volume)
                    except Exception as err:
                        log.warning("comparator cleanup failed for %s: %s", volume.spec, err)
            if volume.cleanup is not None:
                try:
                    volume.cleanup()
                except Exception as err:
                    log.warning("cleanup of %s failed: %s", volume.spec, err)

    def close(self) -> None:
        self.release()
        for prov in self.started.values():
            try:
                prov.stop()
            except Exception as err:
                log.warning("stopping %s failed: %s", prov.name, err)
        self.started.clear()
        self.snaptree.close()
