"""btrfs out of space during revert, on small real filesystems.

A revert first makes a writable snapshot of the chosen snapshot: that needs
metadata space only.  On a ``--mixed`` filesystem data and metadata share
block groups, so filling it with data leaves no room for the snapshot and
the revert must fail cleanly (``OutOfSpace``, volume untouched, nothing
left behind) and work once space is freed.  With separate metadata block
groups (the default) a filesystem whose data space is full still reverts:
the last test documents that rather than faking a failure.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from btrfs_fixtures import btrfs_filesystem, digest_tree, make_subvolume, write_tree
from snaptree import Snaptree
from snaptree.testing import run_cli
from snaptree_btrfs.backend import revert_temp, snapshot_dir

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def _write(volume: str, seed: int) -> str:
    write_tree(volume, seed, files=20, large_bytes=1 << 20, sparse_bytes=1 << 20)
    return digest_tree(volume)


def _fill(mountpoint: str) -> None:
    """Fill the filesystem outside any volume: big writes, then tiny files for the slack."""
    folder = os.path.join(mountpoint, "filler")
    os.mkdir(folder)
    with pytest.raises(OSError) as full:
        with open(os.path.join(folder, "big"), "wb") as handle:
            while True:
                handle.write(b"\xa5" * (1 << 20))
    assert full.value.errno == errno.ENOSPC
    index = 0
    try:
        while True:
            with open(os.path.join(folder, f"small{index}"), "wb") as handle:
                handle.write(b"s" * 512)
            index += 1
    except OSError as err:
        assert err.errno == errno.ENOSPC
    os.sync()


def _free(mountpoint: str) -> None:
    folder = os.path.join(mountpoint, "filler")
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)
    os.sync()  # btrfs returns the space at transaction commit


def _scene(state: str, volumes: list[str]) -> tuple[list[str], list[str]]:
    """Snapshots s1 and s2 of ``volumes``; return the digests at each."""
    with Snaptree(state) as api:
        api.create_group("vm", [f"btrfs:{v}" for v in volumes])
        first = [_write(v, 10 + i) for i, v in enumerate(volumes)]
        api.create("vm", "s1")
        second = [_write(v, 20 + i) for i, v in enumerate(volumes)]
        api.create("vm", "s2")
    return first, second


def _settled(state: str, volumes: list[str]) -> None:
    """After a failed revert and ``recover``: catalog consistent, no temporary subvolume."""
    with Snaptree(state, auto_recover=False) as api:
        report = api.recover()
        assert report.errors == []
        assert api.catalog.journal_open("vm") == []
        drift = api.check("vm")
        assert drift.clean, drift.as_dict()
        snapshots = api.list("vm")
        assert [s.name for s in snapshots] == ["s1", "s2"]
        assert api.current("vm").name == "s2"
    for volume in volumes:
        assert not os.path.lexists(revert_temp(volume))
        assert sorted(os.listdir(snapshot_dir(volume))) == sorted(s.snapshot_id for s in snapshots)


def test_revert_on_full_mixed_filesystem(tmp_path):
    with btrfs_filesystem(str(tmp_path), size="64M", mkfs_args=("--mixed",)) as mountpoint:
        volume = make_subvolume(os.path.join(mountpoint, "vm1"))
        state = str(tmp_path / "state")
        (first,), (second,) = _scene(state, [volume])
        _fill(mountpoint)

        done = run_cli(["revert", "vm", "s1"], state)

        assert done.returncode == 6, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("snaptree: error: btrfs: out of space"), lines
        assert digest_tree(volume) == second
        assert sorted(os.listdir(mountpoint)) == [".vm1.snaptree", "filler", "vm1"]
        _settled(state, [volume])
        assert digest_tree(volume) == second

        _free(mountpoint)
        retry = run_cli(["revert", "vm", "s1"], state)
        assert retry.returncode == 0, retry.stderr
        assert digest_tree(volume) == first
        assert sorted(os.listdir(mountpoint)) == [".vm1.snaptree", "vm1"]
        with Snaptree(state) as api:
            assert api.current("vm").name == "s1"
            assert api.check("vm").clean


def test_group_reverts_partly_when_one_filesystem_is_full(tmp_path):
    """Two volumes on two filesystems, the second full: the error says what was reverted."""
    (tmp_path / "roomy").mkdir()
    (tmp_path / "full").mkdir()
    with btrfs_filesystem(str(tmp_path / "roomy"), size="128M") as roomy, \
            btrfs_filesystem(str(tmp_path / "full"), size="64M", mkfs_args=("--mixed",)) as full:
        volumes = [make_subvolume(os.path.join(roomy, "disk-a")),
                   make_subvolume(os.path.join(full, "disk-b"))]
        state = str(tmp_path / "state")
        first, second = _scene(state, volumes)
        _fill(full)

        done = run_cli(["revert", "vm", "s1"], state)

        assert done.returncode == 6, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "out of space" in lines[0], lines
        assert f"already reverted: btrfs:{volumes[0]}" in lines[0]
        assert [digest_tree(v) for v in volumes] == [first[0], second[1]]
        assert "'snaptree recover vm'" in lines[0]
        with Snaptree(state, auto_recover=False) as api:  # half-reverted: kept open, reported
            assert [e["operation"] for e in api.catalog.journal_open("vm")] == ["revert"]
            assert [d["operation"] for d in api.check("vm").interrupted] == ["revert"]
        refused = run_cli(["create", "vm", "mixed"], state)  # recover cannot finish it yet
        assert refused.returncode == 8, refused.stderr

        _free(full)
        retry = run_cli(["revert", "vm", "s1"], state)  # rolls the revert forward first
        assert retry.returncode == 0, retry.stderr
        assert [digest_tree(v) for v in volumes] == first
        with Snaptree(state) as api:
            assert api.current("vm").name == "s1" and api.check("vm").clean


def test_revert_when_only_data_space_is_full(tmp_path):
    """Separate metadata block groups: a data-full filesystem still reverts (no failure to fake)."""
    with btrfs_filesystem(str(tmp_path), size="128M", mkfs_args=("--data", "single", "--metadata", "dup")) as mountpoint:
        usage = subprocess.run(["btrfs", "filesystem", "df", mountpoint], check=True,
                               capture_output=True, text=True).stdout
        assert "Data+Metadata" not in usage and "Metadata" in usage, usage
        volume = make_subvolume(os.path.join(mountpoint, "vm1"))
        state = str(tmp_path / "state")
        (first,), _ = _scene(state, [volume])
        _fill(mountpoint)

        done = run_cli(["revert", "vm", "s1"], state)

        assert done.returncode == 0, done.stderr
        assert digest_tree(volume) == first
        assert not os.path.lexists(revert_temp(volume))
        with Snaptree(state) as api:
            assert api.current("vm").name == "s1"
            assert api.check("vm").clean
