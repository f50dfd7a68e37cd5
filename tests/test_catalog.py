"""The SQLite catalog: schema, permissions, integrity."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from snaptree import Snaptree
from snaptree.catalog import SCHEMA_VERSION, Catalog
from snaptree.errors import PermissionDenied, StateError
from snaptree.model import Group, Snapshot, SnapshotState, Volume


def test_state_dir_and_catalog_are_private(tmp_path):
    state = tmp_path / "state"
    img = tmp_path / "d.img"
    img.write_bytes(b"x" * 1024)
    with Snaptree(str(state)) as api:
        api.create_group("g", [f"raw:{img}"])
        api.create("g", "s")
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "catalog.sqlite").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state / "locks").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "audit.jsonl").st_mode) == 0o600


def test_wal_and_schema_version(tmp_path):
    cat = Catalog(str(tmp_path / "c.sqlite"))
    assert cat.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cat.schema_version() == SCHEMA_VERSION
    assert cat.integrity_check() == "ok"
    cat.close()


def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "c.sqlite")
    Catalog(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="schema version 99"):
        Catalog(path)


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError):
        Catalog(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_state_dir_non_root(tmp_path):
    state = tmp_path / "ro"
    state.mkdir(mode=0o500)
    with pytest.raises(PermissionDenied):
        Snaptree(str(state))


def test_read_only_state_dir(tmp_path):
    """A read-only catalog is refused before anything runs, even for root."""
    state = tmp_path / "state"
    img = tmp_path / "d.img"
    img.write_bytes(b"x" * 1024)
    with Snaptree(str(state)) as api:
        api.create_group("g", [f"raw:{img}"])
    os.chmod(state / "catalog.sqlite", 0o400)
    if os.geteuid() == 0:
        # root bypasses mode bits; a read-only bind shows the real failure in test_faults
        pytest.skip("root ignores file modes; covered by the read-only mount test")
    with pytest.raises(PermissionDenied):
        Snaptree(str(state))


def test_open_journal_is_per_group_and_ends_with_the_entry(tmp_path):
    cat = Catalog(str(tmp_path / "c.sqlite"))
    with cat.write("test") as db:
        done = cat.journal_begin("a", "create", None, {}, db)
        cat.journal_finish(done, "done", db)
    assert not cat.has_open_journal("a")
    with cat.write("test") as db:
        open_id = cat.journal_begin("a", "delete", None, {}, db)
    assert cat.has_open_journal("a") and not cat.has_open_journal("b")
    assert [e["op_id"] for e in cat.journal_open("a")] == [open_id]
    with cat.write("test") as db:
        cat.journal_finish(open_id, "failed", db, error="x")
    assert not cat.has_open_journal("a")
    cat.close()


def test_a_group_added_again_elsewhere_is_read_afresh(tmp_path):
    """Group definitions are kept per catalog; another connection deleting
    the group and adding one of the same name must not leave the old one."""
    path = str(tmp_path / "c.sqlite")
    ours, theirs = Catalog(path), Catalog(path)
    ours.add_group(Group("g", (Volume("raw", "/a.img"),), options={"k": "1"}, created=1.0))
    first = ours.get_group("g")
    assert first.volumes == (Volume("raw", "/a.img"),) and first.current is None
    with pytest.raises(TypeError):
        first.options["k"] = "2"  # shared with later reads: read-only
    theirs.delete_group("g")
    theirs.add_group(Group("g", (Volume("raw", "/b.img"),), options={"k": "3"}, created=2.0))
    again = ours.get_group("g")
    assert again.volumes == (Volume("raw", "/b.img"),) and dict(again.options) == {"k": "3"}
    with theirs.write("test") as db:
        theirs.add_pending_snapshot(Snapshot(snapshot_id="s1", group="g", name="one", parent=None,
                                             created=3.0, description="",
                                             state=SnapshotState.COMPLETE), db)
        theirs.set_current("g", "s1", db)
    assert (ours.get_group("g").current, ours.get_group("g").current_id) == ("one", "s1")
    ours.close()
    theirs.close()
