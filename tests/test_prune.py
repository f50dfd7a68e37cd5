"""``prune``: keep the N newest snapshots and the current one, delete the rest."""

from __future__ import annotations

import json

import pytest

from cli_helpers import st
from snaptree import Snaptree
from snaptree.errors import BackendError, InvalidInput


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
    assert code == 0 and json.loads(out) == {"deleted": ["s1", "s3"], "dry_run": True}
    assert len(json.loads(st(capsys, state, "list", "vm", "--json")[1])) == 5  # nothing deleted
    code, out, err = st(capsys, state, "prune", "vm", "--keep", "2")
    assert (code, out, err) == (0, "deleted 's1', 's3'\n", "")
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
        assert api.prune("vm", 0) == ["s1", "s3", "s4", "s5"]
        assert [s.name for s in api.list("vm")] == ["s2"]
        api.revert("vm", "s2")
        assert disk.read_bytes() == b"2" * 4096


@pytest.mark.parametrize("keep", ["-1", "two", "1.5", ""])
def test_bad_counts(capsys, five, keep):
    state, _ = five
    with pytest.raises(SystemExit) as exited:
        st(capsys, state, "prune", "vm", "--keep", keep)
    assert exited.value.code == 2 and "whole number of 0 or more" in capsys.readouterr().err
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
        with pytest.raises(BackendError, match=r"pruning stopped; deleted before: 's1'"):
            api.prune("vm", 1)
        assert calls == ["s1", "s3"]
        monkeypatch.delenv("SNAPTREE_FAIL_AT")
        names = [s.name for s in api.list("vm")]
        assert names == ["s2", "s3", "s4", "s5"]  # s3 stays ('deleting'): recover finishes it
        api.recover("vm")
        assert [s.name for s in api.list("vm")] == ["s2", "s4", "s5"]


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
        deleted = api.prune("vm", 2)
        kept = {s.name: s.snapshot_id for s in api.list("vm")}
        assert "s3" in deleted and "s1" in kept  # the snapshot now called s1 is a kept one
