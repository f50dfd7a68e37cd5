"""``group add`` / ``group remove``: a VM gains or loses a disk, the group keeps its history."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cli_helpers import st
from qemu_fixtures import make_images, start_vm
from snaptree import Snaptree
from snaptree.api import CATALOG_FILE
from snaptree.catalog import _SCHEMA_V1, SCHEMA_VERSION, Catalog
from snaptree.errors import NotSupported, StateError


@pytest.fixture
def disks(tmp_path):
    made = []
    for index in range(3):
        disk = tmp_path / f"d{index}.img"
        disk.write_bytes(b"0" * 8192)
        made.append(disk)
    return tmp_path / "state", made


def fill(disk, byte: bytes) -> None:
    disk.write_bytes(byte * 8192)


def test_an_added_disk_is_left_alone_by_older_snapshots(capsys, disks):
    state, (d0, d1, _) = disks
    assert st(capsys, state, "group", "create", "vm", f"raw:{d0}")[0] == 0
    fill(d0, b"a")
    assert st(capsys, state, "create", "vm", "before")[0] == 0
    code, out, err = st(capsys, state, "group", "add", "vm", f"raw:{d1}", "--json")
    assert (code, err) == (0, "") and json.loads(out)["volumes"] == [f"raw:{d0}", f"raw:{d1}"]
    fill(d0, b"b")
    fill(d1, b"B")
    assert st(capsys, state, "create", "vm", "after")[0] == 0
    fill(d0, b"c")
    fill(d1, b"C")
    code, out, err = st(capsys, state, "revert", "vm", "before")
    assert code == 0 and f"raw:{d1} joined the group after snapshot 'before'" in err
    assert d0.read_bytes() == b"a" * 8192 and d1.read_bytes() == b"C" * 8192
    assert st(capsys, state, "check", "vm")[0] == 0  # no member there is no drift
    assert st(capsys, state, "revert", "vm", "after")[0] == 0
    assert d0.read_bytes() == b"b" * 8192 and d1.read_bytes() == b"B" * 8192
    code, out, _ = st(capsys, state, "info", "vm", "before", "--json")
    assert [m["volume"] for m in json.loads(out)["members"]] == [f"raw:{d0}"]
    assert st(capsys, state, "delete", "vm", "before")[0] == 0
    assert st(capsys, state, "check", "vm")[0] == 0


def test_warnings_are_the_last_operations_own(disks):
    """A toolstack reads Snaptree.warnings after each call: a volume change
    must not repeat what the revert before it warned about."""
    state, (d0, d1, _) = disks
    with Snaptree(str(state)) as api:
        api.create_group("vm", [f"raw:{d0}"])
        api.create("vm", "before")
        api.add_volumes("vm", [f"raw:{d1}"])
        api.revert("vm", "before")
        assert [w for w in api.warnings if "joined the group after" in w]
        api.remove_volumes("vm", [f"raw:{d1}"])
        assert api.warnings == []
        api.add_volumes("vm", [f"raw:{d1}"])
        assert api.warnings == []


def test_remove_waits_for_the_snapshots_holding_the_disk(capsys, disks):
    state, (d0, d1, d2) = disks
    assert st(capsys, state, "group", "create", "vm", f"raw:{d0}", f"raw:{d1}")[0] == 0
    assert st(capsys, state, "create", "vm", "s1")[0] == 0
    before = st(capsys, state, "group", "show", "vm", "--json")[1]
    code, out, err = st(capsys, state, "group", "remove", "vm", f"raw:{d1}")
    assert code == 4 and "has members in 1 snapshot(s)" in err and "'s1'" in err
    assert st(capsys, state, "group", "show", "vm", "--json")[1] == before
    assert st(capsys, state, "delete", "vm", "s1")[0] == 0
    fill(d1, b"x")
    code, out, err = st(capsys, state, "group", "remove", "vm", f"raw:{d1}")
    assert code == 0 and "it has 1" in out
    assert d1.read_bytes() == b"x" * 8192  # the data stays
    # the freed volume may join another group; the removed one is not ours any more
    assert st(capsys, state, "group", "create", "other", f"raw:{d1}")[0] == 0
    assert st(capsys, state, "create", "vm", "s2")[0] == 0
    assert st(capsys, state, "check", "vm")[0] == 0


@pytest.mark.parametrize("action, args, code, message", [
    ("remove", ["raw:/nowhere.img"], 3, "is not in group 'vm'"),
    ("remove", ["{d0}", "{d1}"], 2, "no volume left"),
    ("remove", ["{d1}", "{d1}"], 2, "listed twice"),
    ("add", ["{d0}"], 4, "already belongs to group 'vm'"),
    ("add", ["{d2}", "{d2}"], 2, "listed twice"),
    ("add", ["raw:/nowhere.img"], 3, "does not exist"),
    ("add", ["nobackend"], 2, "BACKEND:LOCATOR"),
])
def test_bad_input_changes_nothing(capsys, disks, action, args, code, message):
    state, (d0, d1, d2) = disks
    assert st(capsys, state, "group", "create", "vm", f"raw:{d0}", f"raw:{d1}")[0] == 0
    before = st(capsys, state, "group", "show", "vm", "--json")[1]
    specs = [a.format(d0=f"raw:{d0}", d1=f"raw:{d1}", d2=f"raw:{d2}") for a in args]
    got, out, err = st(capsys, state, "group", action, "vm", *specs)
    assert got == code and message in err and err.count("\n") == 1 and out == ""
    assert st(capsys, state, "group", "show", "vm", "--json")[1] == before


def test_another_process_sees_the_new_volumes(disks):
    """The catalog caches group definitions: a change elsewhere must show."""
    state, (d0, d1, _) = disks
    with Snaptree(str(state)) as one, Snaptree(str(state)) as two:
        one.create_group("vm", [f"raw:{d0}"])
        assert len(one.group("vm").volumes) == 1  # cached now
        two.add_volumes("vm", [f"raw:{d1}"])
        assert [v.spec for v in one.group("vm").volumes] == [f"raw:{d0}", f"raw:{d1}"]
        snap = one.create("vm", "both")
        assert len(snap.members) == 2
        two.delete("vm", "both")
        two.remove_volumes("vm", [f"raw:{d0}"])
        assert [v.spec for v in one.group("vm").volumes] == [f"raw:{d1}"]


def _old_catalog(folder, disk, version: int, *statements: str):
    """A catalog as an older build left it: schema 1's tables, ``version`` in
    meta, ``statements`` run on top, and group 'vm' holding ``disk``.
    Returns the catalog's path."""
    path = folder / CATALOG_FILE
    folder.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_V1)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    for statement in statements:
        conn.execute(statement)
    conn.execute("INSERT INTO groups (name, options, created) VALUES ('vm', '{}', 1.0)")
    conn.execute("INSERT INTO volumes VALUES (?, 'vm', 'raw', ?, 0)", (f"raw:{disk}", str(disk)))
    conn.commit()
    conn.close()
    return path


def test_a_version_1_catalog_is_migrated(tmp_path, disks):
    _, (d0, _, _) = disks
    path = _old_catalog(tmp_path / "old", d0, 1)
    catalog = Catalog(str(path))
    assert catalog.schema_version() == SCHEMA_VERSION == 2
    assert [v.spec for v in catalog.get_group("vm").volumes] == [f"raw:{d0}"]
    catalog.close()
    with Snaptree(str(path.parent)) as api:
        api.create("vm", "s1")
        assert api.check("vm").clean


@pytest.mark.qemu
def test_memory_from_before_a_disk_joined_is_refused(tmp_path):
    images = make_images(str(tmp_path), 2)
    vm = start_vm(str(tmp_path), images)
    try:
        with Snaptree(str(tmp_path / "state")) as api:
            api.create_group("vm", [f"qcow2:{images[0]}"], qmp_socket=vm.qmp_socket)
            api.create("vm", "ram", memory=True)
            api.add_volumes("vm", [f"qcow2:{images[1]}"])
            with pytest.raises(NotSupported, match="--disks-only"):
                api.revert("vm", "ram")
            assert api.group("vm").current == "ram" and api.journal("vm")[0]["status"] == "done"
            vm.quit()  # a disks-only revert of a running VM needs a launch recipe
            api.revert("vm", "ram", disks_only=True)
            assert any("joined the group after snapshot 'ram'" in w for w in api.warnings)
            api.create("vm", "two")
            assert len(api.info("vm", "two").members) == 2
            assert api.check("vm").clean
    finally:
        vm.kill()


def test_remove_waits_for_an_interrupted_create(disks):
    """A create killed after making a member on the volume: that member is not
    in the catalog yet, so removing the volume would hide it from recover."""
    import os
    import subprocess
    import sys
    state, (d0, d1, _) = disks
    with Snaptree(str(state)) as api:
        api.create_group("vm", [f"raw:{d1}", f"raw:{d0}"])  # d1 first: its member is made
    killed = subprocess.run([sys.executable, "-m", "snaptree", "--state-dir", str(state), "create",
                             "vm", "lost"], capture_output=True, text=True,
                            env={**os.environ, "SNAPTREE_KILL_AT_LABEL": "backend:snapshot:raw:after"})
    assert killed.returncode == -9
    with Snaptree(str(state), auto_recover=False) as api:
        with pytest.raises(StateError, match="unfinished operation"):
            api.remove_volumes("vm", [f"raw:{d1}"])
        assert len(api.group("vm").volumes) == 2
    with Snaptree(str(state)) as api:  # recovered first, then removed
        api.remove_volumes("vm", [f"raw:{d1}"])
        assert any(w.startswith("recovered first:") for w in api.warnings)
        folder = d1.parent / f".{d1.name}.snaptree"
        assert not folder.exists() or os.listdir(folder) == []  # the half-made member went
        assert api.list("vm") == [] and api.check("vm").clean


def test_a_lost_disk_is_forgotten_with_its_members(capsys, disks):
    state, (d0, d1, _) = disks
    assert st(capsys, state, "group", "create", "vm", f"raw:{d0}", f"raw:{d1}")[0] == 0
    assert st(capsys, state, "create", "vm", "s1")[0] == 0
    assert st(capsys, state, "create", "vm", "s2")[0] == 0
    code, _, err = st(capsys, state, "group", "remove", "vm", f"raw:{d1}", "--forget-members")
    assert code == 4 and "still there" in err  # not for a disk that exists
    d1.unlink()  # the disk is gone
    code, _, err = st(capsys, state, "group", "remove", "vm", f"raw:{d1}")
    assert code == 4 and "--forget-members" in err
    code, out, err = st(capsys, state, "group", "remove", "vm", f"raw:{d1}", "--forget-members")
    assert code == 0 and err.count("no longer tracks") == 2 and ".d1.img.snaptree" in err
    assert st(capsys, state, "delete", "vm", "s1")[0] == 0
    assert st(capsys, state, "revert", "vm", "s2")[0] == 0
    assert st(capsys, state, "check", "vm")[0] == 0


def test_a_snapshot_left_with_no_member_is_named_refused_and_deletable(capsys, disks):
    """s1 is older than d1 and its only member was on d0, a disk that is
    gone: once d0 is forgotten, s1 holds nothing.  The forget says so, check
    reports it, revert refuses it (it would change nothing and still make
    it current), delete removes it."""
    state, (d0, d1, _) = disks
    assert st(capsys, state, "group", "create", "vm", f"raw:{d0}")[0] == 0
    assert st(capsys, state, "create", "vm", "s1")[0] == 0
    assert st(capsys, state, "group", "add", "vm", f"raw:{d1}")[0] == 0
    fill(d1, b"b")
    assert st(capsys, state, "create", "vm", "s2")[0] == 0
    d0.unlink()
    code, _, err = st(capsys, state, "group", "remove", "vm", f"raw:{d0}", "--forget-members")
    assert code == 0
    assert [line for line in err.splitlines() if "no member left" in line] == [
        "snaptree: warning: snapshot 's1' has no member left (taken before the group's other "
        "volumes joined): it holds nothing to revert to; delete it"]
    code, out, _ = st(capsys, state, "check", "vm")
    assert code == 11 and "  empty: snapshot=s1" in out.splitlines()
    fill(d1, b"c")
    journal = st(capsys, state, "journal", "vm", "--json")[1]
    code, out, err = st(capsys, state, "revert", "vm", "s1")
    assert (code, out) == (7, "") and err.count("\n") == 1
    assert "snapshot 's1' has no member left on any volume of group 'vm'" in err
    assert st(capsys, state, "journal", "vm", "--json")[1] == journal  # nothing journaled
    assert json.loads(st(capsys, state, "current", "vm", "--json")[1])["name"] == "s2"
    assert d1.read_bytes() == b"c" * 8192
    assert st(capsys, state, "delete", "vm", "s1") == (0, "deleted 's1'\n", "")
    assert st(capsys, state, "check", "vm")[0] == 0
    assert st(capsys, state, "revert", "vm", "s2")[0] == 0 and d1.read_bytes() == b"b" * 8192


def test_a_member_missing_from_a_later_snapshot_is_drift(disks):
    """Only snapshots older than a volume may lack a member on it."""
    state, (d0, d1, _) = disks
    with Snaptree(str(state)) as api:
        api.create_group("vm", [f"raw:{d0}"])
        api.create("vm", "old")
        api.add_volumes("vm", [f"raw:{d1}"])
        api.create("vm", "new")
        with api.catalog.write("test-lose-rows") as db:  # a catalog that lost rows
            for name in ("old", "new"):
                db.execute("DELETE FROM members WHERE snapshot_id=? AND spec=?",
                           (api.info("vm", name).snapshot_id, f"raw:{d0}"))
            db.execute("DELETE FROM members WHERE snapshot_id=? AND spec=?",
                       (api.info("vm", "new").snapshot_id, f"raw:{d1}"))
        report = api.check("vm")
        missing = {(m["snapshot"], m["volume"]) for m in report.missing}
        assert missing == {("old", f"raw:{d0}"), ("new", f"raw:{d0}"), ("new", f"raw:{d1}")}
        with pytest.raises(NotSupported, match="has no member for"):
            api.revert("vm", "new")


def test_a_version_2_catalog_without_joined_is_completed(tmp_path, disks):
    """A catalog an earlier build of schema 2 made (no volumes.joined) still opens."""
    _, (d0, _, _) = disks
    path = _old_catalog(tmp_path / "v2", d0, 2,
                        "ALTER TABLE groups ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")
    with Snaptree(str(path.parent)) as api:
        api.create("vm", "s1")
        assert [s.name for s in api.list("vm")] == ["s1"] and api.check("vm").clean
