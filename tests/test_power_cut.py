"""Unsynced journal entries for creates, and what ``recover`` does after a
reboot erased one (real raw images, real SQLite; the power cut itself is
emulated by dropping the rows the lost write held)."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

from snaptree import Snaptree
from snaptree.catalog import Catalog
from snaptree.testing import forget_unsynced_creates, run_cli


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "state")


@pytest.fixture
def writes(monkeypatch):
    """(label, synced) of every catalog write, recorded around the real one."""
    seen: list[tuple[str, bool]] = []
    real = Catalog.write

    @contextlib.contextmanager
    def recording(self, label, *, durable=True):
        with real(self, label, durable=durable) as db:
            yield db
        seen.append((label, durable))

    monkeypatch.setattr(Catalog, "write", recording)
    return seen


def test_one_synced_epoch_per_group_and_boot_then_unsynced_entries(state, disks, writes, monkeypatch):
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
        writes.clear()
        first = api.create("vm", "a")
        second = api.create("vm", "b")
        # raw snapshots one volume per call: the first member's row rides unsynced too
        once = [("create-begin", False), ("create-members", False), ("create-commit", True)]
        assert writes == [("create-epoch", True)] + once + once
        # the epoch prefix marks every create of this boot
        assert first.snapshot_id[:8] == second.snapshot_id[:8]
        assert list(api.catalog.intent_epochs("vm")) == [first.snapshot_id[:8]]
        # reverts and deletes keep synced journal entries
        writes.clear()
        api.revert("vm", "a")
        api.delete("vm", "b")
        assert all(synced for _, synced in writes), writes


def test_unknown_boot_means_synced_entries(state, disks, writes, monkeypatch):
    monkeypatch.setattr("snaptree.coordinator.boot_id", lambda: None)
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
        writes.clear()
        api.create("vm", "a")
        assert writes == [("create-begin", True), ("create-members", False), ("create-commit", True)]
        assert api.catalog.intent_epochs("vm") == {}


def test_reboot_after_a_lost_entry_removes_only_that_create(state, disks, monkeypatch):
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
        kept = api.create("vm", "kept")
        # a member file with a snaptree id of another epoch: not ours to remove
        stray = os.path.join(os.path.dirname(str(disks[0])), ".disk0.img.snaptree",
                             "00000000feedf00d.img")
        shutil.copyfile(disks[0], stray)
        crashed = run_cli(["create", "vm", "lost"], state,
                          env={"SNAPTREE_KILL_AT_LABEL": "catalog:create-commit:before"})
        assert crashed.returncode == -9, crashed.stderr
        forget_unsynced_creates(api, "vm")
        folder = os.path.dirname(stray)
        assert len(os.listdir(folder)) == 3
        old_epoch = kept.snapshot_id[:8]

    monkeypatch.setenv("SNAPTREE_BOOT_ID", "after-the-power-cut")
    with Snaptree(state) as api:
        # any mutating command recovers first: here a create
        made = api.create("vm", "next")
        assert sorted(os.listdir(folder)) == sorted(
            ["00000000feedf00d.img", f"{kept.snapshot_id}.img", f"{made.snapshot_id}.img"])
        epochs = api.catalog.intent_epochs("vm")
        assert old_epoch not in epochs and list(epochs.values()) == ["after-the-power-cut"]
        drift = api.check("vm")
        assert [o["snapshot_id"] for o in drift.orphans] == ["00000000feedf00d"]
        api.delete_group("vm", with_snapshots=True)
        assert api.catalog.intent_epochs("vm") == {}


def test_recover_reports_the_removal(state, disks, monkeypatch):
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{p}" for p in disks])
        api.create("vm", "kept")
        crashed = run_cli(["create", "vm", "lost"], state,
                          env={"SNAPTREE_KILL_AT_LABEL": "backend:snapshot:raw:after"})
        assert crashed.returncode == -9, crashed.stderr
        forget_unsynced_creates(api, "vm")
    monkeypatch.setenv("SNAPTREE_BOOT_ID", "after-the-power-cut")
    out = run_cli(["recover", "--json"], state)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("lost with a reboot") >= 1
    with Snaptree(state) as api:
        assert api.check("vm").clean
        assert [s.name for s in api.list("vm")] == ["kept"]
