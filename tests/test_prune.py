"""``prune``: keep the N newest snapshots and the current one, delete the rest."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cli_helpers import st
from qemu_fixtures import image_digest, make_images, write_pattern
from snaptree import Snaptree, Snapshot, SnapshotState
from snaptree.errors import BackendError, InvalidInput
from snaptree.pruning import prune_order
from snaptree_qcow2 import active_image
from snaptree_qcow2.layout import overlay_path


@pytest.fixture
def five(tmp_path):
    """raw group with s1..s5 (s_i holds byte i); current: s2 after a revert."""
    disk = tmp_path / "d.img"
    state = tmp_path / "state"
    with Snaptree(str(state)) as api:
        disk.write_bytes(b"0" * 4096)
        api.create_group("vm", [f"raw:{disk}"])
        for index in range(1, 6):
            disk.write_bytes(str(index).encode() * 4096)
            api.create("vm", f"s{index}")
        api.revert("vm", "s2")
    return state, disk


def test_keeps_the_newest_and_the_current(capsys, five):
    state, disk = five
    code, out, _ = st(capsys, state, "prune", "vm", "--keep", "2", "--dry-run", "--json")
    assert code == 0 and json.loads(out) == {"deleted": ["s3", "s1"], "dry_run": True}
    assert len(json.loads(st(capsys, state, "list", "vm", "--json")[1])) == 5  # nothing deleted
    code, out, err = st(capsys, state, "prune", "vm", "--keep", "2")
    assert (code, out, err) == (0, "deleted 's3', 's1'\n", "")  # as --dry-run said
    rows = json.loads(st(capsys, state, "list", "vm", "--json")[1])
    assert [r["name"] for r in rows] == ["s2", "s4", "s5"]
    assert [r["parent"] for r in rows] == [None, "s2", "s4"]  # re-parented as delete does
    assert st(capsys, state, "revert", "vm", "s5")[0] == 0
    assert disk.read_bytes() == b"5" * 4096
    assert st(capsys, state, "check", "vm")[0] == 0
    assert st(capsys, state, "prune", "vm", "--keep", "9")[1] == "nothing to delete\n"


def test_keep_zero_leaves_only_the_current(five):
    state, disk = five
    with Snaptree(str(state)) as api:
        assert api.prune("vm", 0) == ["s5", "s4", "s3", "s1"]
        assert [s.name for s in api.list("vm")] == ["s2"]
        api.revert("vm", "s2")
        assert disk.read_bytes() == b"2" * 4096


@pytest.mark.parametrize("keep", ["-1", "two", "1.5", ""])
def test_bad_counts(capsys, five, keep):
    state, _ = five
    with pytest.raises(SystemExit) as exited:
        st(capsys, state, "prune", "vm", "--keep", keep)
    assert exited.value.code == 2 and "whole number from 0 to" in capsys.readouterr().err
    with Snaptree(str(state)) as api:
        assert len(api.list("vm")) == 5
        with pytest.raises(InvalidInput):
            api.prune("vm", True)


def test_a_failed_delete_stops_and_names_what_went(capsys, five, monkeypatch):
    state, _ = five
    monkeypatch.setenv("SNAPTREE_FAIL_AT", "backend:delete:raw:before")
    with Snaptree(str(state)) as api:
        real = api.coordinator.delete
        calls = []

        def second_fails(group, name, **kw):
            calls.append(name)
            if len(calls) == 1:
                monkeypatch.delenv("SNAPTREE_FAIL_AT")
                try:
                    return real(group, name, **kw)
                finally:
                    monkeypatch.setenv("SNAPTREE_FAIL_AT", "backend:delete:raw:before")
            return real(group, name, **kw)

        api.coordinator.delete = second_fails
        with pytest.raises(BackendError, match=r"pruning stopped; deleted before: 's4'\)$"):
            api.prune("vm", 1)
        assert calls == ["s4", "s3"]
        monkeypatch.delenv("SNAPTREE_FAIL_AT")
        names = [s.name for s in api.list("vm")]
        assert names == ["s1", "s2", "s3", "s5"]  # s3 stays ('deleting'): recover finishes it
        api.recover("vm")
        assert [s.name for s in api.list("vm")] == ["s1", "s2", "s5"]


def test_a_revert_to_a_doomed_snapshot_meanwhile_keeps_it(five):
    """Decided again under the lock: another process reverting to s1 after
    prune listed it (injected where the delete takes the lock) keeps s1."""
    state, disk = five
    with Snaptree(str(state)) as api:
        finish = api.coordinator.on_locked

        def revert_elsewhere(group, operation):
            finish(group, operation)
            if operation == "delete" and api.group("vm").current != "s1":
                with api.catalog.write("test-revert") as db:  # what the other revert commits
                    api.catalog.set_current("vm", api.info("vm", "s1").snapshot_id, db)

        api.coordinator.on_locked = revert_elsewhere
        assert api.prune("vm", 2) == ["s3"]
        assert [s.name for s in api.list("vm")] == ["s1", "s2", "s4", "s5"]
        assert api.group("vm").current == "s1"


def test_a_rename_meanwhile_is_not_followed_to_another_snapshot(five):
    state, _ = five
    with Snaptree(str(state)) as api:
        finish = api.coordinator.on_locked
        swapped = []

        def swap_names(group, operation):
            finish(group, operation)
            if operation == "delete" and not swapped:  # s1 and s4 trade names
                swapped.append(True)
                s1, s4 = api.info("vm", "s1"), api.info("vm", "s4")
                api.catalog.edit_snapshot(s1.snapshot_id, "tmp", "")
                api.catalog.edit_snapshot(s4.snapshot_id, "s1", "")
                api.catalog.edit_snapshot(s1.snapshot_id, "s4", "")

        api.coordinator.on_locked = swap_names
        ids = {s.name: s.snapshot_id for s in api.list("vm")}
        assert api.prune("vm", 2) == ["s3", "s4"]  # s1 by its new name
        assert [s.snapshot_id for s in api.list("vm")] == [ids["s2"], ids["s4"], ids["s5"]]
        assert api.info("vm", "s1").snapshot_id == ids["s4"]  # the snapshot now called s1 stays


def test_a_snapshot_renamed_just_before_its_delete_still_goes(five):
    """Decided by id: a rename that lands after prune chose s1 and before its
    delete takes the lock (injected there) does not keep s1."""
    state, disk = five
    with Snaptree(str(state)) as api:
        s1 = api.info("vm", "s1").snapshot_id
        finish, delete = api.coordinator.on_locked, api.coordinator.delete
        deleting = []

        def note_target(group, name, **kw):
            deleting.append(kw.get("snapshot_id"))
            return delete(group, name, **kw)

        def rename_elsewhere(group, operation):
            finish(group, operation)
            if operation == "delete" and deleting[-1] == s1:  # what 'snaptree edit' commits
                api.catalog.edit_snapshot(s1, "first", "renamed meanwhile")

        api.coordinator.delete, api.coordinator.on_locked = note_target, rename_elsewhere
        planned = api.prune("vm", 2, dry_run=True)
        deleted = api.prune("vm", 2)
        assert [s.name for s in api.list("vm")] == ["s2", "s4", "s5"]
        assert (planned, deleted) == (["s3", "s1"], ["s3", "first"])  # the name it went by
        api.revert("vm", "s2")
        assert disk.read_bytes() == b"2" * 4096 and api.check("vm").clean


@pytest.mark.qemu
@pytest.mark.parametrize("clock", ["steady", "set back"])
def test_qcow2_internal_snapshots_go_before_the_external_one_below_them(tmp_path, clock):
    """e1 is external; i2 and i3 are internal tags in e1's overlay, and qcow2
    refuses to delete e1 while they are there: prune deletes them first.
    With the clock set back between e1 and i2 (i2 looks older than e1),
    the tree still puts i2 first."""
    [disk] = make_images(str(tmp_path), 1)
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("vm", [f"qcow2:{disk}"], options={"qcow2.mode": "external"})
        digests = {}
        for seed, (name, mode) in enumerate([("e1", "external"), ("i2", "internal"),
                                             ("i3", "internal"), ("e4", "external")]):
            write_pattern(active_image(disk), seed + 1)
            digests[name] = image_digest(active_image(disk), str(tmp_path))
            api.create("vm", name, options={"mode": mode})
        if clock == "set back":  # the fault: i2 written down as taken before e1
            with api.catalog.write("test-clock") as db:
                db.execute("UPDATE snapshots SET created=? WHERE snapshot_id=?",
                           (api.info("vm", "e1").created - 60, api.info("vm", "i2").snapshot_id))
        write_pattern(active_image(disk), 9)
        planned = api.prune("vm", 1, dry_run=True)
        deleted = api.prune("vm", 1)  # was: refused at e1, nothing deleted
        assert [s.name for s in api.list("vm")] == ["e4"] and api.check("vm").clean
        assert deleted == planned and sorted(planned) == ["e1", "i2", "i3"]
        assert planned.index("e1") == 2
        api.revert("vm", "e4")
        assert image_digest(active_image(disk), str(tmp_path)) == digests["e4"]
        overlays = os.listdir(os.path.dirname(overlay_path(disk, "0" * 16)))
        assert not [f for f in overlays if f.endswith(".qcow2") and not f.startswith("run-")
                    and f != os.path.basename(overlay_path(disk, api.info("vm", "e4").snapshot_id))]


def test_parents_in_a_loop_still_get_an_order():
    """Only a broken catalog has one; every doomed snapshot is still listed, once."""
    def snap(name, parent, created):
        return Snapshot(snapshot_id=f"{created:016x}", group="vm", name=name, parent=parent,
                        created=float(created), description="", state=SnapshotState.COMPLETE)
    snaps = [snap("a", "c", 1), snap("b", "a", 2), snap("c", "b", 3), snap("d", "c", 4)]
    assert [s.name for s in prune_order(snaps, 1, None)] == ["c", "b", "a"]


def _immutable(path, on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


@pytest.mark.root
def test_the_target_of_an_unfinished_revert_is_kept_and_deleting_it_says_so(capsys, tmp_path):
    """A revert stopped after one of two disks went back waits for recover, which needs its
    target: prune keeps it; an explicit delete abandons the revert and says so then."""
    a, b, state = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "state"
    a.write_bytes(b"A" * 4096)
    b.write_bytes(b"B" * 4096)
    with Snaptree(str(state)) as api:
        api.create_group("g", [f"raw:{a}", f"raw:{b}"])
        api.create("g", "s1")
        a.write_bytes(b"a" * 4096)
        b.write_bytes(b"b" * 4096)
        api.create("g", "s2")
    _immutable(b, True)
    try:
        code, _, err = st(capsys, state, "revert", "g", "s1")
        assert code == 9 and "already reverted" in err
        code, out, err = st(capsys, state, "prune", "g", "--keep", "1", "--dry-run")
        assert (code, out) == (0, "nothing to delete\n")  # s2 newest and current, s1 the target
        assert st(capsys, state, "prune", "g", "--keep", "1")[0] == 0
        with Snaptree(str(state)) as api:
            assert [s.name for s in api.list("g")] == ["s1", "s2"]
        code, out, err = st(capsys, state, "delete", "g", "s1")
        assert code == 0 and "abandons the unfinished revert" in err and "partly reverted" in err
    finally:
        _immutable(b, False)
