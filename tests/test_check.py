"""``check``: what it counts as drift (exit 11), and a group an operation
is working on, which it reports busy (exit 5) instead of half-done."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from btrfs_fixtures import make_subvolume
from cli_helpers import st
from snaptree import Snaptree, hookimpl
from snaptree.errors import Busy
from snaptree.locking import group_lock
from snaptree.testing import run_cli

DRIFT = 11


def _group_with_two_snapshots(state, disks):
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
        api.create("vm", "a")
        for d in disks:
            d.write_bytes(b"Z" * 65536)
        api.create("vm", "b")


def test_a_revert_cut_short_is_drift_until_recover(capsys, tmp_path, disks):
    state = str(tmp_path / "state")
    _group_with_two_snapshots(state, disks)
    killed = run_cli(["revert", "vm", "a"], state,
                     env={"SNAPTREE_KILL_AT_LABEL": "backend:revert:raw:after"})
    assert killed.returncode == -9  # one disk at a, the other at b
    code, out, _ = st(capsys, state, "check", "vm")
    assert code == DRIFT
    assert out.splitlines()[0] == "group 'vm': DRIFT"
    (line,) = [l for l in out.splitlines() if "interrupted" in l]
    assert "revert of 'a'" in line and "'snaptree recover vm'" in line
    code, out, _ = st(capsys, state, "check", "vm", "--json")
    report = json.loads(out)
    assert report["interrupted"][0]["operation"] == "revert" and not report["clean"]
    assert st(capsys, state, "recover", "vm")[0] == 0
    assert st(capsys, state, "check", "vm")[0] == 0


def test_a_group_an_operation_holds_is_busy_not_drift(capsys, tmp_path, disks):
    """A create in progress has a pending snapshot and an open journal
    entry: check waits for the group like any command, then says busy."""
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
    inside, finish = threading.Event(), threading.Event()

    class HoldTheSnapshot:  # fault injection: the create stops halfway
        @hookimpl(wrapper=True)
        def snaptree_snapshot(self, backend, volumes, ctx):
            inside.set()
            finish.wait(30)
            return (yield)

    def create():
        with Snaptree(state, plugins=[HoldTheSnapshot()]) as api:
            api.create("vm", "a")

    worker = threading.Thread(target=create)
    worker.start()
    try:
        assert inside.wait(30)
        code, out, err = st(capsys, state, "--wait", "0", "check", "vm")
        assert (code, out) == (Busy.exit_code, "")
        assert err.count("\n") == 1 and "busy" in err
        with Snaptree(state, lock_timeout=0.2) as api, pytest.raises(Busy):
            api.check("vm")
    finally:
        finish.set()
        worker.join(30)
    code, out, _ = st(capsys, state, "check", "vm")
    assert code == 0, out


def test_check_waits_for_the_lock_as_long_as_asked(tmp_path, disks):
    state = str(tmp_path / "state")
    _group_with_two_snapshots(state, disks)
    taken, release = threading.Event(), threading.Event()

    def hold():
        with group_lock(state, "vm"):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(30)
        assert run_cli(["--wait", "0", "check", "vm"], state).returncode == Busy.exit_code
        threading.Timer(1.0, release.set).start()
        result = run_cli(["--wait", "20", "check", "vm"], state)
        assert result.returncode == 0, result.stderr
    finally:
        release.set()
        holder.join(30)


def test_a_raw_image_that_is_gone_is_drift(capsys, tmp_path, disks):
    state = str(tmp_path / "state")
    _group_with_two_snapshots(state, disks)
    disks[1].unlink()
    code, out, _ = st(capsys, state, "check", "vm", "--json")
    assert code == DRIFT
    (gone,) = json.loads(out)["unclaimed"]
    assert gone["volume"] == f"raw:{disks[1]}" and "does not exist" in gone["error"]
    code, out, _ = st(capsys, state, "check", "vm")
    assert f"unclaimed: volume=raw:{disks[1]}" in out


def test_a_raw_image_replaced_by_a_folder_is_drift(capsys, tmp_path, disks):
    state = str(tmp_path / "state")
    _group_with_two_snapshots(state, disks)
    disks[0].unlink()
    disks[0].mkdir()
    code, out, _ = st(capsys, state, "check", "vm", "--json")
    assert code == DRIFT
    assert "not a regular file" in json.loads(out)["unclaimed"][0]["error"]


@pytest.mark.root
@pytest.mark.btrfs
def test_a_deleted_btrfs_subvolume_is_drift(capsys, tmp_path, btrfs_mount):
    state = str(tmp_path / "state")
    vm1 = make_subvolume(os.path.join(btrfs_mount, "vm1"))
    with Snaptree(state) as api:
        api.create_group("vm", [f"btrfs:{vm1}"])
        api.create("vm", "a")
    assert st(capsys, state, "check", "vm")[0] == 0
    subprocess.run(["btrfs", "subvolume", "delete", vm1], check=True, capture_output=True)
    code, out, _ = st(capsys, state, "check", "vm", "--json")
    assert code == DRIFT
    (gone,) = json.loads(out)["unclaimed"]
    assert gone["volume"] == f"btrfs:{vm1}"
