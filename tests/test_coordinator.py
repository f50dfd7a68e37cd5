"""The coordinator on real raw images: tree, delete, locks, hooks, audit, recover."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from snaptree import Snaptree, SpaceUsage, hookimpl
from snaptree.errors import Busy, Conflict, GroupNotFound, InvalidInput, NotFound, SnaptreeError
from snaptree.locking import group_lock
from snaptree.testing import run_cli


@pytest.fixture
def api(tmp_path):
    with Snaptree(str(tmp_path / "state")) as api:
        yield api


def _group(api, disks, name="vm"):
    return api.create_group(name, [f"raw:{p}" for p in disks])


def test_tree_reparent_and_current(api, disks):
    _group(api, disks)
    api.create("vm", "a")
    api.create("vm", "b")
    api.revert("vm", "a")
    api.create("vm", "c")       # a branch: parent is a (current), not b
    assert api.parent("vm", "c").name == "a"
    tree = api.tree("vm")
    assert [n["name"] for n in tree] == ["a"]
    assert sorted(n["name"] for n in tree[0]["children"]) == ["b", "c"]
    api.delete("vm", "a")       # children re-parented to a's parent (none)
    assert {s.name: s.parent for s in api.list("vm")} == {"b": None, "c": None}
    assert api.current("vm").name == "c"


def test_delete_children_removes_subtree(api, disks):
    _group(api, disks)
    for name in ("a", "b", "c"):
        api.create("vm", name)
    api.revert("vm", "a")
    api.create("vm", "d")
    deleted = api.delete("vm", "b", children=True)
    assert deleted == ["c", "b"]
    assert [s.name for s in api.list("vm")] == ["a", "d"]
    store = disks[0].parent / f".{disks[0].name}.snaptree"
    assert len(os.listdir(store)) == 2


def test_deleting_current_moves_current_to_parent(api, disks):
    _group(api, disks)
    api.create("vm", "a")
    api.create("vm", "b")
    api.delete("vm", "b")
    assert api.current("vm").name == "a"


def test_default_name_and_description(api, disks):
    _group(api, disks)
    snap = api.create("vm", description="before upgrade")
    assert snap.name.startswith("snap-")
    assert api.info("vm", snap.name).description == "before upgrade"


def test_group_rules(api, disks, tmp_path):
    _group(api, disks)
    with pytest.raises(Conflict, match="already belongs to group 'vm'"):
        api.create_group("other", [f"raw:{disks[0]}"])
    spare = tmp_path / "spare.img"
    spare.write_bytes(b"s" * 4096)
    with pytest.raises(Conflict, match="group 'vm' already exists"):
        api.create_group("vm", [f"raw:{spare}"])
    with pytest.raises(InvalidInput, match="listed twice"):
        api.create_group("dup", [f"raw:{spare}", f"raw:{spare}"])
    with pytest.raises(NotFound, match="unknown backend 'nosuch'"):
        api.create_group("nb", [f"nosuch:{disks[1]}"])
    with pytest.raises(InvalidInput, match="BACKEND:LOCATOR"):
        api.create_group("nb", [str(disks[1])])
    with pytest.raises(InvalidInput, match="absolute"):
        api.create_group("rel", ["raw:disk.img"])
    with pytest.raises(GroupNotFound):
        api.create("ghost", "s")
    assert [g.name for g in api.list_groups()] == ["vm"]


def test_group_delete_refuses_with_snapshots(api, disks):
    _group(api, disks)
    api.create("vm", "a")
    with pytest.raises(Conflict, match="--with-snapshots"):
        api.delete_group("vm")
    api.delete_group("vm", with_snapshots=True)
    assert api.list_groups() == []
    assert not (disks[0].parent / f".{disks[0].name}.snaptree").exists()


def test_busy_group_fails_clearly(tmp_path, disks):
    with Snaptree(str(tmp_path / "state"), lock_timeout=0.2) as api:
        _group(api, disks)
        with group_lock(api.state_dir, "vm"):
            started = time.monotonic()
            with pytest.raises(Busy, match="busy"):
                api.create("vm", "blocked")
            assert time.monotonic() - started >= 0.2
        assert api.list("vm") == []
        api.create("vm", "free")


def test_hooks_called_directly(api, disks):
    """Each operation hook answers for its own backend and passes on others."""
    group = _group(api, disks)
    hook = api.plugins.hook
    volume = group.volumes[0]
    assert hook.snaptree_list(backend="raw", volume=volume) == []
    assert hook.snaptree_list(backend="elsewhere", volume=volume) is None
    snap = api.create("vm", "s")
    member = snap.members[0]
    usage = hook.snaptree_space_used(backend="raw", member=member)
    assert isinstance(usage, SpaceUsage) and usage.referenced_bytes >= 65536
    ctx = api.coordinator.context(group, snap.snapshot_id, "s", {})
    assert hook.snaptree_prepare(backend="raw", operation="snapshot", volumes=[volume], ctx=ctx)
    assert hook.snaptree_recover_volume(backend="raw", volume=volume) == []
    assert hook.snaptree_claim_volume(backend="raw", locator=str(disks[0])) == [volume]
    assert hook.snaptree_vm_suspend(group=group, ctx=ctx) is None  # no VM plugin for raw
    assert "raw" in [b.name for b in sum(hook.snaptree_backends(), [])]
    assert hook.snaptree_delete(backend="raw", members=[member], ctx=ctx) is True
    assert hook.snaptree_list(backend="raw", volume=volume) == []
    assert hook.snaptree_delete(backend="raw", members=[member], ctx=ctx) is True, "gone is fine"


def test_recover_volume_removes_leftover_partials(api, disks):
    group = _group(api, disks)
    leftover = disks[0].parent / f".{disks[0].name}.snaptree-revert.partial"
    leftover.write_bytes(b"half")
    report = api.recover("vm")
    assert not leftover.exists()
    assert any("removed leftover" in a for a in report.actions)
    assert group.volumes


def test_memory_needs_a_vm(api, disks):
    _group(api, disks)
    with pytest.raises(InvalidInput, match="QMP socket"):
        api.create("vm", "m", memory=True)


def test_audit_log_wraps_every_backend_call(api, disks):
    _group(api, disks)
    api.create("vm", "a")
    api.revert("vm", "a")
    api.delete("vm", "a")
    with open(os.path.join(api.state_dir, "audit.jsonl"), encoding="utf-8") as log:
        lines = [json.loads(line) for line in log]
    assert [rec["operation"] for rec in lines] == ["snapshot", "snapshot", "revert", "revert", "delete", "delete"]
    assert all(rec["outcome"] == "ok" and rec["duration_s"] >= 0 for rec in lines)


def test_wrapper_sees_failures(api, disks):
    class Boom:
        @hookimpl(wrapper=True)
        def snaptree_revert(self, backend, members, ctx):
            raise SnaptreeError("disk on fire")
            yield  # pragma: no cover

    _group(api, disks)
    api.create("vm", "a")
    api.plugins.register(Boom())
    with pytest.raises(SnaptreeError, match="disk on fire"):
        api.revert("vm", "a")
    entry = api.journal("vm", 1)[0]
    assert entry["operation"] == "revert" and entry["status"] == "failed"


def _crash(state, args, label):
    return run_cli(args, state, env={"SNAPTREE_KILL_AT_LABEL": label})


def test_crash_in_delete_is_finished_by_recover(tmp_path, disks):
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        _group(api, disks)
        api.create("vm", "a")
        api.create("vm", "b")
    result = _crash(state, ["delete", "vm", "a"], "backend:delete:raw:after")
    assert result.returncode == -9
    with Snaptree(state, auto_recover=False) as api:
        assert api.info("vm", "a").state.value == "deleting"
        report = api.recover()
        assert report.errors == []
        assert [s.name for s in api.list("vm")] == ["b"]
        assert api.check("vm").clean


def test_crash_in_revert_is_finished_by_recover(tmp_path, disks):
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        _group(api, disks)
        api.create("vm", "a")
        for d in disks:
            d.write_bytes(b"Z" * 65536)
        api.create("vm", "b")
    result = _crash(state, ["revert", "vm", "a"], "backend:revert:raw:after")
    assert result.returncode == -9
    assert disks[0].read_bytes() == b"A" * 65536   # first member done
    assert disks[1].read_bytes() == b"Z" * 65536   # second not yet
    with Snaptree(state) as api:
        api.recover()
        assert api.current("vm").name == "a"
    assert disks[1].read_bytes() == b"B" * 65536


def _create_in_child(state, name, queue):
    try:
        with Snaptree(state, lock_timeout=60) as api:
            api.create("vm", name)
        queue.put(("ok", name))
    except SnaptreeError as err:
        queue.put(("error", str(err)))


def test_concurrent_creates_serialize(tmp_path, disks):
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        _group(api, disks)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create_in_child, args=(state, f"s{i}", queue)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [queue.get(timeout=5) for _ in procs]
    assert all(r[0] == "ok" for r in results), results
    with Snaptree(state) as api:
        snaps = api.list("vm")
        assert len(snaps) == 4
        assert api.catalog.integrity_check() == "ok"
        assert api.check("vm").clean
        # serialized: each snapshot's parent is the one made before it
        parents = [s.parent for s in snaps]
        assert parents[0] is None and parents[1:] == [s.name for s in snaps[:-1]]


def test_backend_warnings_reach_the_user(tmp_path, disks, capsys):
    class Warner:
        @hookimpl(wrapper=True)
        def snaptree_revert(self, backend, members, ctx):
            result = yield
            ctx.scratch["warnings"].append(f"{backend}: merge deferred until the volume is closed")
            return result

    from snaptree.cli import main
    state = str(tmp_path / "state")
    with Snaptree(state, plugins=[Warner()]) as api:
        _group(api, disks)
        api.create("vm", "a")
        api.revert("vm", "a")
        assert api.warnings == ["raw: merge deferred until the volume is closed"] * 2
        api.create("vm", "b")
        assert api.warnings == []
    assert main(["--state-dir", state, "revert", "vm", "a"]) == 0
    assert "snaptree: warning:" not in capsys.readouterr().err, "no warner registered here"
