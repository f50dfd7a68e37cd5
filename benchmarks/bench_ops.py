"""The benchmarks: the same work on every backend variant that can run here.

Each timed figure is a pytest-benchmark ``pedantic`` run with an untimed
setup (make the snapshot to delete, dirty the volume before a revert), so
the median of a few rounds is the cost of the operation alone.  The report
(``benchmarks.report``) pairs each snaptree figure with the bare primitive
measured on the same volumes in the same run.
"""

from __future__ import annotations

import itertools

import attrs
import pytest

from .lab import Lab, SnaptreeOps
from .storage import MIB

_tags = itertools.count(1)


def _tag(prefix: str = "t") -> str:
    return f"{prefix}{next(_tags)}"


def _time_create(benchmark, actor, vset, rounds):
    benchmark.pedantic(actor.create, setup=lambda: ((_tag(),), {}), teardown=actor.delete,
                       rounds=rounds)


def _time_revert(benchmark, actor, vset, rounds):
    base = _tag("base")
    seeds = itertools.count(100)

    def dirty_then_base():
        seed = next(seeds)
        for volume in vset.volumes:
            if volume.write is not None:
                volume.write(0, MIB, seed)  # something for the revert to undo
        if actor.revert_consumes:
            actor.create(base)
        return (base,), {}

    if not actor.revert_consumes:
        actor.create(base)
    try:
        benchmark.pedantic(actor.revert, setup=dirty_then_base, rounds=rounds)
    finally:
        if not actor.revert_consumes:
            actor.delete(base)


def _time_delete(benchmark, actor, vset, rounds):
    def made():
        tag = _tag()
        actor.create(tag)
        return (tag,), {}

    benchmark.pedantic(actor.delete, setup=made, rounds=rounds)


TIMERS = {"create": _time_create, "revert": _time_revert, "delete": _time_delete}


def bench_operation(benchmark, lab: Lab, case):
    """create / revert / delete latency of one actor on one volume set."""
    vset = lab.volume_set(case.key)
    actor = lab.actor(case.actor, vset, case.variant)
    benchmark.group = f"{case.op} {case.size_mib}MiB x{case.volumes} {case.files}files"
    benchmark.extra_info.update(attrs.asdict(case), kind="latency", label=actor.label,
                                backend=lab.variant(case.variant).backend)
    try:
        TIMERS[case.op](benchmark, actor, vset, lab.plan.rounds(case.size_mib))
    except BaseException:
        lab.release()  # leftovers must not leak into the next case
        raise


def bench_write(benchmark, lab: Lab, write_phase):
    """Overwrite throughput of the live volume, before and right after a snapshot."""
    variant, phase = write_phase
    plan = lab.plan
    vset = lab.volume_set((variant, plan.write_mib, 1, 0))
    volume = vset.volumes[0]
    if volume.write is None:
        pytest.skip(f"the {variant} provisioner gives no way to write to a volume")
    length = plan.write_mib * MIB
    ops = SnaptreeOps(lab.snaptree, vset)
    seeds = itertools.count(1)

    def setup():
        tag = _tag() if phase == "after" else None
        if tag:
            ops.create(tag)  # every timed write lands on freshly shared data
        return (next(seeds), tag), {}

    def write(seed, tag):
        volume.write(0, length, seed)

    def teardown(seed, tag):
        if tag:
            ops.delete(tag)

    benchmark.group = f"write {plan.write_mib}MiB"
    benchmark.extra_info.update(kind="write", variant=variant, phase=phase, bytes=length,
                                backend=lab.variant(variant).backend)
    try:
        benchmark.pedantic(write, setup=setup, teardown=teardown, rounds=plan.write_rounds)
    except BaseException:
        lab.release()
        raise


def _space_of(lab: Lab, variant: str, take, drop) -> dict:
    """Space in use after a snapshot, and after overwriting part of the volume."""
    plan = lab.plan
    vset = lab.volume_set((variant, plan.space_mib, 1, 0), fresh=True)
    prov = lab.provisioner(variant)
    volume = vset.volumes[0]
    base = prov.used_bytes()
    take(vset)
    after_snapshot = prov.used_bytes()
    after_write = None
    if volume.write is not None:
        volume.write(0, plan.space_overwrite_mib * MIB, 4242)
        after_write = prov.used_bytes()
    extra = drop(vset)
    lab.release()
    delta = (lambda value: None if value is None or base is None else value - base)
    return {"snapshot_bytes": delta(after_snapshot), "after_overwrite_bytes": delta(after_write),
            **(extra or {})}


def bench_space(lab: Lab, space_variant):
    """Space one snapshot holds, by snaptree and by the primitive (not timed)."""
    plan = lab.plan
    prov = lab.provisioner(space_variant)
    record = {"kind": "space", "variant": space_variant, "data_bytes": plan.space_mib * MIB,
              "overwrite_bytes": plan.space_overwrite_mib * MIB}

    def snaptree_take(vset):
        lab.snaptree.create(vset.group, "space")

    def snaptree_drop(vset):
        usage = lab.snaptree.space_used(vset.group, "space")[vset.volumes[0].spec]
        lab.snaptree.delete(vset.group, "space")
        return {"reported_exclusive_bytes": usage.exclusive_bytes,
                "reported_referenced_bytes": usage.referenced_bytes}

    try:
        record["snaptree"] = _space_of(lab, space_variant, snaptree_take, snaptree_drop)
        if prov.primitive is not None:
            record["primitive"] = _space_of(
                lab, space_variant,
                lambda vset: prov.primitive.create(vset.volumes[0], "space"),
                lambda vset: prov.primitive.delete(vset.volumes[0], "space"))
    finally:
        lab.records.append(record)
