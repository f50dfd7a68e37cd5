"""What an interrupted operation leaves is dealt with under the group's lock,
before the next operation reads the group; a group that cannot be brought
back to a known state is refused, not worked on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from snaptree import Snaptree, hookimpl
from snaptree.errors import Busy, Conflict, SnaptreeError, StateError
from snaptree.locking import group_lock
from snaptree.testing import run_cli

A, B, Z = b"A" * 65536, b"B" * 65536, b"Z" * 65536


def _two_snapshots(state, disks):
    """Group vm (two raw disks): snapshot a of A/B, snapshot b of Z/Z, disks at Z."""
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
        api.create("vm", "a")
        for d in disks:
            d.write_bytes(Z)
        api.create("vm", "b")


def _revert_killed_after_first_disk(state, disks):
    result = run_cli(["revert", "vm", "a"], state,
                     env={"SNAPTREE_KILL_AT_LABEL": "backend:revert:raw:after"})
    assert result.returncode == -9
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, Z)  # half reverted


def test_a_create_that_waited_for_the_lock_finishes_the_killed_revert_first(tmp_path, disks):
    """The create starts while the group is locked (as by the revert, still
    running); once it has the lock it must not snapshot half-reverted disks."""
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    _revert_killed_after_first_disk(state, disks)
    argv = [sys.executable, "-m", "snaptree", "--state-dir", state, "create", "vm", "c"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with group_lock(state, "vm"):
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
        time.sleep(1.0)  # the child checks what it can before it waits for the lock
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "warning: recovered first:" in err and "finished reverting to 'a'" in err
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, B)
    with Snaptree(state) as api:
        c = api.info("vm", "c")
        assert c.parent == "a" and api.current("vm").name == "c"
        assert not any(e["status"] == "open" for e in api.journal("vm"))
        for d in disks:
            d.write_bytes(Z)
        api.revert("vm", "c")  # c holds the reverted point, A and B
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, B)


def test_a_group_recover_cannot_finish_is_refused(tmp_path, disks):
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    _revert_killed_after_first_disk(state, disks)
    store = disks[1].parent / f".{disks[1].name}.snaptree"
    with Snaptree(state) as api:
        member = next(m for m in api.info("vm", "a").members if m.locator == str(disks[1]))
    kept = tmp_path / "kept"
    (store / f"{member.ref}").rename(kept)  # the revert cannot be finished now
    result = run_cli(["create", "vm", "c"], state)
    assert result.returncode == StateError.exit_code
    assert "unfinished operation that recover could not finish" in result.stderr
    assert result.stderr.count("\n") == 1
    with Snaptree(state, auto_recover=False) as api:
        assert [s.name for s in api.list("vm")] == ["a", "b"]
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, Z)  # nothing more changed
    kept.rename(store / member.ref)
    assert run_cli(["create", "vm", "c"], state).returncode == 0
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, B)


def test_deleting_the_snapshot_a_stuck_revert_aims_at_frees_the_group(tmp_path, disks):
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    _revert_killed_after_first_disk(state, disks)
    with Snaptree(state) as api:
        member = next(m for m in api.info("vm", "a").members if m.locator == str(disks[1]))
    store = disks[1].parent / f".{disks[1].name}.snaptree"
    (store / member.ref).unlink()  # snapshot a can never be restored now
    assert run_cli(["create", "vm", "c"], state).returncode == StateError.exit_code
    deleted = run_cli(["delete", "vm", "a"], state)
    assert deleted.returncode == 0, deleted.stderr
    assert "warning: left unfinished:" in deleted.stderr
    created = run_cli(["create", "vm", "c"], state)
    assert created.returncode == 0, created.stderr
    assert "abandoned an interrupted revert" in created.stderr
    with Snaptree(state) as api:
        assert [s.name for s in api.list("vm")] == ["b", "c"]
        assert not any(e["status"] == "open" for e in api.journal("vm"))


def test_without_auto_recover_an_open_entry_refuses_the_operation(tmp_path, disks):
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    _revert_killed_after_first_disk(state, disks)
    with Snaptree(state, auto_recover=False) as api:
        with pytest.raises(StateError, match="run 'snaptree recover vm' first"):
            api.create("vm", "c")
        assert [s.name for s in api.list("vm")] == ["a", "b"]
        assert api.recover("vm").errors == []
        api.create("vm", "c")


def test_retrying_a_failed_delete_reports_it_done(tmp_path, disks, monkeypatch):
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    monkeypatch.setenv("SNAPTREE_FAIL_AT", "backend:delete:raw:after")
    result = run_cli(["delete", "vm", "b"], state)
    assert result.returncode != 0 and "stays 'deleting'" in result.stderr
    monkeypatch.delenv("SNAPTREE_FAIL_AT")
    result = run_cli(["--json", "delete", "vm", "b"], state)
    assert result.returncode == 0, result.stderr
    assert '"b"' in result.stdout
    with Snaptree(state) as api:
        assert [s.name for s in api.list("vm")] == ["a"]
        assert api.check("vm").clean


class _HeldInBegin:
    """Holds a create inside ``snaptree_operation_begin`` (under the lock)."""

    def __init__(self):
        self.entered, self.go = threading.Event(), threading.Event()

    @hookimpl
    def snaptree_operation_begin(self, group, operation, ctx):
        if operation == "snapshot":
            self.entered.set()
            self.go.wait(30)


def test_group_delete_decides_under_the_lock(tmp_path, disks):
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
    held = _HeldInBegin()
    outcome: dict[str, object] = {}

    def create():
        with Snaptree(state, plugins=[held]) as api:
            outcome["create"] = api.create("vm", "y").name

    def delete_group():
        try:
            with Snaptree(state, lock_timeout=30) as api:
                api.delete_group("vm")
            outcome["delete"] = "deleted"
        except SnaptreeError as err:
            outcome["delete"] = err

    creating = threading.Thread(target=create)
    creating.start()
    assert held.entered.wait(30)
    deleting = threading.Thread(target=delete_group)
    deleting.start()
    time.sleep(0.5)  # delete_group counts snapshots (none yet) and waits for the lock
    held.go.set()
    creating.join(60)
    deleting.join(60)
    assert outcome["create"] == "y"
    assert isinstance(outcome["delete"], Conflict) and not isinstance(outcome["delete"], Busy)
    with Snaptree(state) as api:
        assert [s.name for s in api.list("vm")] == ["y"]


def test_recover_without_the_backend_leaves_the_entry_open(tmp_path, disks, monkeypatch):
    """No installed plugin answers for raw: that is not "nothing to remove"."""
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
    result = run_cli(["create", "vm", "crashed"], state,
                     env={"SNAPTREE_KILL_AT_LABEL": "catalog:create-commit:before"})
    assert result.returncode == -9
    made = sorted(p.name for d in disks for p in (d.parent / f".{d.name}.snaptree").iterdir())
    assert len(made) == 2
    monkeypatch.setenv("SNAPTREE_PLUGINS", "btrfs")
    with Snaptree(state) as api:
        report = api.recover("vm")
        assert report.errors and "unknown backend 'raw'" in report.errors[0]
        assert any(e["status"] == "open" for e in api.journal("vm"))
        drift = api.check("vm")
        assert not drift.missing and len(drift.unreadable) == 2
    assert sorted(p.name for d in disks for p in (d.parent / f".{d.name}.snaptree").iterdir()) == made
    monkeypatch.delenv("SNAPTREE_PLUGINS")
    with Snaptree(state) as api:
        assert api.recover("vm").errors == []
        assert api.list("vm") == [] and api.check("vm").clean


def test_without_auto_recover_a_reboot_alone_does_not_refuse(tmp_path, disks, monkeypatch):
    """After a reboot a group's old epochs want a sweep for lost creates;
    that is recover's business, not a reason to refuse work."""
    state = str(tmp_path / "state")
    monkeypatch.setenv("SNAPTREE_BOOT_ID", "boot-one")
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
        api.create("vm", "a")
    monkeypatch.setenv("SNAPTREE_BOOT_ID", "boot-two")
    with Snaptree(state, auto_recover=False) as api:
        api.create("vm", "b")
        api.revert("vm", "a")
        assert [s.name for s in api.list("vm")] == ["a", "b"]


def test_a_revert_a_backend_reports_failed_later_gives_back_the_previous_current(tmp_path,
                                                                                 disks):
    """A backend that finishes a revert after it returned (LVM's deferred
    merge) reports through recover that it never happened: the snapshot
    current before that revert is current again, once."""
    from snaptree import RevertFailed

    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    with Snaptree(state) as api:
        api.revert("vm", "a")
        target = api.info("vm", "a").snapshot_id

        class LateFailure:
            @hookimpl(tryfirst=True)
            def snaptree_recover_volume(self, backend, volume):
                return [RevertFailed(target, "the deferred revert failed")]

        api.plugins.pm.register(LateFailure())
        report = api.recover("vm")
        assert api.current("vm").name == "b"
        assert any(line.endswith("the deferred revert failed") for line in report.actions)
        assert any("'b' is current again" in line for line in report.actions), report.actions
        assert [e["status"] for e in api.journal("vm") if e["operation"] == "revert"] == ["failed"]
        again = api.recover("vm")  # reported again: nothing more changes
        assert not any("current again" in line for line in again.actions)
        assert api.current("vm").name == "b"


def _journal_open(state):
    with Snaptree(state, auto_recover=False) as api:
        return [e for e in api.journal("vm") if e["status"] == "open"]


def test_ctrl_c_in_a_revert_leaves_it_for_recover_to_finish(tmp_path, disks):
    """A Ctrl-C between two disks' reverts is a crash for the volumes: the
    entry stays open and recover rolls the revert forward, as after SIGKILL."""
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    result = run_cli(["revert", "vm", "a"], state,
                     env={"SNAPTREE_INTERRUPT_AT_LABEL": "backend:revert:raw:after"})
    assert result.returncode == 130
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, Z)  # half reverted
    assert result.stderr.count("\n") == 1
    assert "revert of group 'vm' to 'a' was cut short" in result.stderr
    assert "'snaptree recover vm' finishes the revert" in result.stderr
    assert [e["operation"] for e in _journal_open(state)] == ["revert"]
    result = run_cli(["recover", "vm"], state)
    assert result.returncode == 0, result.stderr
    assert "finished reverting to 'a'" in result.stdout
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, B)
    with Snaptree(state) as api:
        assert api.current("vm").name == "a"
        assert api.check("vm").clean


def test_ctrl_c_in_a_revert_is_finished_by_the_next_operation(tmp_path, disks):
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    run_cli(["revert", "vm", "a"], state,
            env={"SNAPTREE_INTERRUPT_AT_LABEL": "backend:revert:raw:after"})
    result = run_cli(["create", "vm", "c"], state)
    assert result.returncode == 0, result.stderr
    assert "recovered first" in result.stderr and "finished reverting to 'a'" in result.stderr
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, B)
    with Snaptree(state) as api:
        assert api.info("vm", "c").parent == "a"


def test_ctrl_c_in_a_create_removes_the_member_no_call_returned(tmp_path, disks):
    """Interrupted after the first disk's member was made but before the
    backend call returned it: the create's undo still finds and removes it."""
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
    result = run_cli(["create", "vm", "a"], state,
                     env={"SNAPTREE_INTERRUPT_AT_LABEL": "backend:snapshot:raw:after"})
    assert result.returncode == 130
    assert "no operation was left unfinished" in result.stderr
    assert not _journal_open(state)
    for disk in disks:
        assert not (disk.parent / f".{disk.name}.snaptree").exists()
    with Snaptree(state) as api:
        assert api.list("vm") == [] and api.check("vm").clean


def test_ctrl_c_in_a_delete_leaves_it_for_recover_to_finish(tmp_path, disks):
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    result = run_cli(["delete", "vm", "a"], state,
                     env={"SNAPTREE_INTERRUPT_AT_LABEL": "backend:delete:raw:after"})
    assert result.returncode == 130
    assert "delete of 'a' in group 'vm' was cut short" in result.stderr
    assert "'snaptree recover vm' finishes the delete" in result.stderr
    result = run_cli(["recover", "vm"], state)
    assert result.returncode == 0, result.stderr
    with Snaptree(state) as api:
        assert [s.name for s in api.list("vm")] == ["b"] and api.check("vm").clean


def test_recover_of_a_busy_group_is_busy(tmp_path, disks):
    """A group recover had to leave alone is exit 5, named or among all."""
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    _revert_killed_after_first_disk(state, disks)
    with group_lock(state, "vm"):  # another operation works on the group
        named = run_cli(["recover", "vm"], state)
        every = run_cli(["recover"], state)
        quiet = run_cli(["recover", "vm", "--json"], state)
    for result in (named, every, quiet):
        assert result.returncode == Busy.exit_code, result.stderr
        assert result.stderr.count("\n") == 1
        assert "group 'vm' is busy" in result.stderr and "'snaptree recover vm'" in result.stderr
    assert "nothing to recover" not in named.stdout + every.stdout
    assert json.loads(quiet.stdout)["skipped_groups"] == ["vm"]
    assert (disks[0].read_bytes(), disks[1].read_bytes()) == (A, Z)  # untouched
    done = run_cli(["recover"], state)
    assert done.returncode == 0 and "finished reverting to 'a'" in done.stdout


def test_recover_of_a_busy_group_with_nothing_open_is_busy_when_named(tmp_path, disks):
    state = str(tmp_path / "state")
    _two_snapshots(state, disks)
    with group_lock(state, "vm"):
        assert run_cli(["recover", "vm"], state).returncode == Busy.exit_code
        every = run_cli(["recover"], state)  # nothing of vm's was left to recover
    assert every.returncode == 0 and every.stdout == "nothing to recover\n"
