"""The btrfs backend on a real loop-mounted btrfs: content, errors, recovery."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess

import pytest

from snaptree import OpContext, Group, Snaptree, Volume
from snaptree.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    NotSupported,
    OutOfSpace,
    PermissionDenied,
    SnaptreeError,
    VolumeNotFound,
)
from snaptree.testing import run_cli
from snaptree_btrfs import plugin
from snaptree_btrfs import ioctl
from snaptree_btrfs.backend import revert_temp, snapshot_dir

from btrfs_fixtures import (
    btrfs_filesystem,
    digest_tree,
    make_subvolume,
    write_tree,
)

pytestmark = [pytest.mark.root, pytest.mark.btrfs]

ID1, ID2, ID3 = "00000000000000a1", "00000000000000a2", "00000000000000a3"
#: the longest volume name in bytes: btrfs's 255 less the ".NAME.snaptree" folder's 10
LONGEST_NAME = 245


@contextlib.contextmanager
def _open(path: str):
    fd = ioctl.open_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


def ctx_for(volumes, snapshot_id=ID1, name="s") -> OpContext:
    return OpContext(group=Group("g", tuple(volumes)), snapshot_id=snapshot_id, snapshot_name=name)


@pytest.fixture
def subvol(btrfs_mount):
    return make_subvolume(os.path.join(btrfs_mount, "vm1"))


def snap(volume: Volume, snapshot_id: str):
    ctx = ctx_for([volume], snapshot_id)
    plugin.prepare("snapshot", [volume], ctx)
    (member,) = plugin.snapshot([volume], ctx)
    return member


def revert(member):
    ctx = ctx_for([member.volume], member.snapshot_id)
    ctx.scratch["members"] = [member]
    plugin.prepare("revert", [member.volume], ctx)
    ctx.scratch.pop("members")
    plugin.revert([member], ctx)


# -- claiming -----------------------------------------------------------------


def test_claim_normalises_and_checks(subvol, btrfs_mount, tmp_path):
    assert plugin.claim(subvol + "/") == Volume("btrfs", subvol)
    with pytest.raises(InvalidInput, match="must be absolute"):
        plugin.claim("relative/vm1")
    with pytest.raises(VolumeNotFound, match="does not exist"):
        plugin.claim(subvol + "-missing")
    plain = os.path.join(btrfs_mount, "plain-dir")
    os.mkdir(plain)
    with pytest.raises(InvalidInput, match="not a btrfs subvolume"):
        plugin.claim(plain)
    other = tmp_path / "elsewhere"
    other.mkdir()
    if ioctl.fs_type(str(other)) != ioctl.BTRFS_SUPER_MAGIC:
        with pytest.raises(InvalidInput, match="not on a btrfs filesystem"):
            plugin.claim(str(other))
    with pytest.raises(InvalidInput, match="mount point"):
        plugin.claim(btrfs_mount)


# -- content survives byte for byte ---------------------------------------------


def test_snapshot_is_read_only_and_revert_is_exact(subvol):
    volume = plugin.claim(subvol)
    write_tree(subvol, 1, files=1500, large_bytes=24 << 20, sparse_bytes=512 << 20)
    os.sync()
    sparse_blocks = os.stat(os.path.join(subvol, "sparse.img")).st_blocks
    first = digest_tree(subvol)
    member = snap(volume, ID1)
    assert member.ref == os.path.join(snapshot_dir(subvol), ID1)
    assert digest_tree(member.ref) == first
    with pytest.raises(OSError) as raised:
        open(os.path.join(member.ref, "large.bin"), "ab")
    assert raised.value.errno == errno.EROFS
    with open(os.path.join(subvol, "large.bin"), "r+b") as handle:
        handle.seek(5 << 20)
        handle.write(b"changed")
    write_tree(subvol, 2, files=300)
    assert digest_tree(subvol) != first
    revert(member)
    assert digest_tree(subvol) == first
    assert os.stat(os.path.join(subvol, "sparse.img")).st_blocks == sparse_blocks, "holes kept"
    assert ioctl.is_subvolume(os.stat(subvol))
    with open(os.path.join(subvol, "new-file"), "wb") as handle:  # writable again
        handle.write(b"ok")
    assert not os.path.lexists(revert_temp(subvol))


def test_newer_snapshots_survive_reverting_to_older(subvol):
    volume = plugin.claim(subvol)
    digests = {}
    members = {}
    for seed, sid in ((1, ID1), (2, ID2), (3, ID3)):
        write_tree(subvol, seed, files=30)
        digests[sid] = digest_tree(subvol)
        members[sid] = snap(volume, sid)
    revert(members[ID1])
    assert digest_tree(subvol) == digests[ID1]
    assert sorted(m.snapshot_id for m in plugin.list(volume)) == [ID1, ID2, ID3]
    revert(members[ID3])
    assert digest_tree(subvol) == digests[ID3]
    revert(members[ID3])  # twice is the same (recover may redo a revert)
    assert digest_tree(subvol) == digests[ID3]
    revert(members[ID2])
    assert digest_tree(subvol) == digests[ID2]
    for member in members.values():
        assert digest_tree(member.ref) == digests[member.snapshot_id]


# -- list, delete, space -------------------------------------------------------------


def test_list_reports_only_snaptree_snapshots(subvol):
    volume = plugin.claim(subvol)
    member = snap(volume, ID1)
    folder = snapshot_dir(subvol)
    os.mkdir(os.path.join(folder, "0000000000000bad"))            # a plain directory
    make_subvolume(os.path.join(folder, "made-by-someone-else"))  # a foreign name
    assert plugin.list(volume) == [member]
    plugin.delete([member], ctx_for([volume]))
    plugin.delete([member], ctx_for([volume]))  # gone already is fine
    assert plugin.list(volume) == []
    assert sorted(os.listdir(folder)) == ["0000000000000bad", "made-by-someone-else"]


def test_delete_removes_folder_when_empty(subvol):
    volume = plugin.claim(subvol)
    members = [snap(volume, ID1), snap(volume, ID2)]
    plugin.delete(members[:1], ctx_for([volume]))
    assert os.listdir(snapshot_dir(subvol)) == [ID2]
    plugin.delete(members[1:], ctx_for([volume]))
    assert not os.path.exists(snapshot_dir(subvol))


def test_member_outside_snapshot_dir_is_refused(subvol, btrfs_mount):
    volume = plugin.claim(subvol)
    victim = make_subvolume(os.path.join(btrfs_mount, "precious"))
    member = snap(volume, ID1)
    forged = type(member)(backend="btrfs", locator=subvol, snapshot_id=ID1, ref=victim)
    with pytest.raises(InvalidInput, match="not where snaptree keeps"):
        plugin.delete([forged], ctx_for([volume]))
    assert ioctl.is_subvolume(os.stat(victim))


def test_space_used_needs_quotas(subvol, btrfs_mount):
    volume = plugin.claim(subvol)
    write_tree(subvol, 1, files=5, large_bytes=4 << 20)
    member = snap(volume, ID1)
    usage = plugin.space_used(member)
    assert (usage.exclusive_bytes, usage.referenced_bytes) == (None, None)
    subprocess.run(["btrfs", "quota", "enable", btrfs_mount], check=True)
    subprocess.run(["btrfs", "quota", "rescan", "-w", btrfs_mount], check=True,
                   capture_output=True)
    os.unlink(os.path.join(subvol, "large.bin"))  # now only the snapshot holds it
    usage = plugin.space_used(member)
    assert usage.referenced_bytes >= 4 << 20
    assert usage.exclusive_bytes >= 4 << 20
    shown = subprocess.run(["btrfs", "qgroup", "show", "--raw", btrfs_mount], check=True,
                           capture_output=True, text=True).stdout
    row = next(line.split() for line in shown.splitlines() if line.endswith(ID1))
    assert (int(row[1]), int(row[2])) == (usage.referenced_bytes, usage.exclusive_bytes)


# -- errors -----------------------------------------------------------------------


def test_name_taken(subvol):
    volume = plugin.claim(subvol)
    snap(volume, ID1)
    ctx = ctx_for([volume], ID1)
    with pytest.raises(Conflict, match="already exists"):
        plugin.prepare("snapshot", [volume], ctx)
    with pytest.raises(Conflict, match="already exists"):  # the ioctl's EEXIST, mapped
        plugin.snapshot([volume], ctx)
    assert [m.snapshot_id for m in plugin.list(volume)] == [ID1]


def test_read_only_filesystem(subvol, btrfs_mount):
    volume = plugin.claim(subvol)
    member = snap(volume, ID1)
    subprocess.run(["mount", "-o", "remount,ro", btrfs_mount], check=True)
    try:
        for operation in ("snapshot", "revert", "delete"):
            ctx = ctx_for([volume], ID2)
            ctx.scratch["members"] = [member]
            with pytest.raises(PermissionDenied, match="read-only filesystem"):
                plugin.prepare(operation, [volume], ctx)
        with pytest.raises(PermissionDenied, match="read-only"):
            plugin.snapshot([volume], ctx_for([volume], ID2))
        with pytest.raises(PermissionDenied, match="read-only"):
            plugin.revert([member], ctx_for([volume], ID1))
        assert [m.snapshot_id for m in plugin.list(volume)] == [ID1]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", btrfs_mount], check=True)


@pytest.mark.parametrize("folder_exists", [False, True], ids=["mkdir", "ioctl"])
def test_out_of_space(tmp_path, folder_exists):
    # mixed block groups: data fills the metadata space too, so the snapshot cannot fit
    with btrfs_filesystem(str(tmp_path), size="64M", mkfs_args=("--mixed",)) as mountpoint:
        subvol = make_subvolume(os.path.join(mountpoint, "vm1"))
        volume = plugin.claim(subvol)
        if folder_exists:
            os.mkdir(snapshot_dir(subvol))
        with pytest.raises(OSError) as full:
            with open(os.path.join(subvol, "fill"), "wb") as handle:
                while True:
                    handle.write(b"x" * (1 << 20))
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(OutOfSpace, match="out of space while snapshotting"):
            plugin.snapshot([volume], ctx_for([volume]))
        assert plugin.list(volume) == []
        assert os.path.isdir(snapshot_dir(subvol)) == folder_exists


def test_nested_subvolume_blocks_revert(subvol):
    volume = plugin.claim(subvol)
    member = snap(volume, ID1)
    make_subvolume(os.path.join(subvol, "inner"))
    with pytest.raises(NotSupported, match="nested subvolume"):
        revert(member)
    assert os.path.isdir(os.path.join(subvol, "inner"))


def test_nested_subvolume_blocks_snapshot(subvol, tmp_path):
    make_subvolume(os.path.join(subvol, "inner"))
    volume = plugin.claim(subvol)
    with pytest.raises(NotSupported, match="contains 1 nested subvolume"):
        plugin.prepare("snapshot", [volume], ctx_for([volume]))
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"btrfs:{subvol}"])
    done = run_cli(["create", "vm", "s1"], state)
    assert done.returncode == 7, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "nested subvolume" in done.stderr
    assert not os.path.exists(snapshot_dir(subvol))
    with Snaptree(state) as api:
        assert api.list("vm") == []


def _default_id(mountpoint: str) -> int:
    shown = subprocess.run(["btrfs", "subvolume", "get-default", mountpoint], check=True,
                           capture_output=True, text=True).stdout
    return int(shown.split()[1])  # "ID 256 gen ... path NAME"


def _set_default(target: str, mountpoint: str | None = None) -> None:
    argv = ["btrfs", "subvolume", "set-default", target] + ([mountpoint] if mountpoint else [])
    subprocess.run(argv, check=True, capture_output=True)


def test_default_subvolume_revert_refused_before_any_change(subvol, btrfs_mount, tmp_path):
    state = str(tmp_path / "state")
    write_tree(subvol, 1, files=5)
    first = digest_tree(subvol)
    with Snaptree(state) as api:
        api.create_group("vm", [f"btrfs:{subvol}"])
        api.create("vm", "s1")
        write_tree(subvol, 2, files=5)
        second = digest_tree(subvol)
        api.create("vm", "s2")
    _set_default(subvol)
    default = _default_id(btrfs_mount)

    done = run_cli(["revert", "vm", "s1"], state)

    assert done.returncode == 7, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "is the filesystem's default subvolume" in lines[0], lines
    assert "set-default" in lines[0]
    assert digest_tree(subvol) == second
    assert _default_id(btrfs_mount) == default
    assert sorted(os.listdir(btrfs_mount)) == [".vm1.snaptree", "vm1"]
    recovered = run_cli(["recover", "vm"], state)
    assert recovered.returncode == 0, recovered.stderr
    with Snaptree(state) as api:
        assert api.current("vm").name == "s2"
        assert api.check("vm").clean
    # with the default moved away, the same revert goes through
    _set_default("5", btrfs_mount)
    retry = run_cli(["revert", "vm", "s1"], state)
    assert retry.returncode == 0, retry.stderr
    assert digest_tree(subvol) == first
    assert sorted(os.listdir(btrfs_mount)) == [".vm1.snaptree", "vm1"]


def test_eperm_as_root_does_not_blame_privileges(subvol, btrfs_mount):
    assert os.geteuid() == 0
    _set_default(subvol)
    with _open(btrfs_mount) as fd, pytest.raises(OSError) as refused:
        ioctl.destroy_subvolume(fd, "vm1")  # btrfs will not delete the default subvolume
    assert refused.value.errno == errno.EPERM
    mapped = ioctl.map_oserror(refused.value, "deleting vm1")
    assert isinstance(mapped, PermissionDenied)
    assert "root" not in str(mapped), str(mapped)
    assert ioctl.is_subvolume(os.stat(subvol))


def test_recover_leaves_an_old_leftover_that_is_the_default(subvol, btrfs_mount):
    """What an earlier version left after reverting the default subvolume:
    the replaced tree, still the default, under the old temporary name."""
    volume = plugin.claim(subvol)
    leftover = os.path.join(btrfs_mount, ".vm1.snaptree-revert")
    subprocess.run(["btrfs", "subvolume", "snapshot", subvol, leftover], check=True,
                   capture_output=True)
    _set_default(leftover)
    for _ in range(2):  # every run says so, none fails
        (line,) = plugin.recover_volume(volume)
        assert line.startswith(f"left the temporary subvolume {leftover}"), line
        assert "default subvolume" in line and "set-default" in line
        assert ioctl.is_subvolume(os.stat(leftover))
    _set_default("5", btrfs_mount)
    assert plugin.recover_volume(volume) == [
        f"removed the temporary subvolume {leftover} of an interrupted revert"]
    assert not os.path.lexists(leftover)
    assert plugin.recover_volume(volume) == []


def test_revert_keeps_read_only_flag(subvol):
    volume = plugin.claim(subvol)
    write_tree(subvol, 1, files=10)
    first = digest_tree(subvol)
    writable = snap(volume, ID1)
    with _open(subvol) as fd:
        ioctl.set_readonly(fd, True)
    read_only = snap(volume, ID2)
    for member in (writable, read_only):  # the volume's flag counts, not the snapshot's
        revert(member)
        assert digest_tree(subvol) == first
        with _open(subvol) as fd:
            assert ioctl.get_readonly(fd) is True
    with pytest.raises(OSError) as refused:
        open(os.path.join(subvol, "new"), "wb")
    assert refused.value.errno == errno.EROFS
    with _open(subvol) as fd:
        ioctl.set_readonly(fd, False)
    revert(read_only)  # the snapshot of a read-only volume: writable stays writable
    with _open(subvol) as fd:
        assert ioctl.get_readonly(fd) is False
    assert not os.path.lexists(revert_temp(subvol))


@pytest.mark.parametrize("name", ["v" * 250, "v" * (LONGEST_NAME + 1), "é" * 123],
                         ids=["250-bytes", "246-bytes", "246-bytes-in-123-characters"])
def test_volume_name_too_long_to_snapshot_is_refused_at_group_create(btrfs_mount, tmp_path,
                                                                     name):
    too_long = make_subvolume(os.path.join(btrfs_mount, name))
    size = len(name.encode())
    state = str(tmp_path / "state")
    result = run_cli(["group", "create", "vm", f"btrfs:{too_long}"], state)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    limit = f"at most {LONGEST_NAME} bytes"
    assert f"has {size} bytes" in result.stderr and limit in result.stderr
    with Snaptree(state) as api:
        assert api.list_groups() == []
        with pytest.raises(InvalidInput, match=f"has {size} bytes.*{limit}"):
            api.create_group("vm", [f"btrfs:{too_long}"])
        assert api.list_groups() == []
    assert sorted(os.listdir(btrfs_mount)) == [name]


def test_group_an_older_check_let_a_too_long_name_into_is_not_refused_by_it(
        btrfs_mount, tmp_path, monkeypatch):
    from snaptree.errors import BackendError
    from snaptree_btrfs.backend import BtrfsBackend

    too_long = make_subvolume(os.path.join(btrfs_mount, "v" * (LONGEST_NAME + 1)))
    with Snaptree(str(tmp_path / "state")) as api:
        monkeypatch.setattr(BtrfsBackend, "_check_room", lambda self, path: None, raising=False)
        api.create_group("vm", [f"btrfs:{too_long}"])  # as an older version did
        monkeypatch.undo()
        with pytest.raises(BackendError, match="File name too long"):
            api.create("vm", "s1")  # fails in the kernel, as it always did, and is undone
        assert api.list("vm") == []
        assert not os.path.lexists(snapshot_dir(too_long))
        assert api.check("vm").clean
        api.delete_group("vm")
        assert api.list_groups() == []


def test_longest_volume_name_snapshots_reverts_and_deletes(btrfs_mount, tmp_path):
    long_subvol = make_subvolume(os.path.join(btrfs_mount, "v" * LONGEST_NAME))
    state = str(tmp_path / "state")
    write_tree(long_subvol, 1, files=5)
    first = digest_tree(long_subvol)
    with Snaptree(state) as api:
        api.create_group("vm", [f"btrfs:{long_subvol}"])
        api.create("vm", "s1")
        write_tree(long_subvol, 2, files=5)
        api.revert("vm", "s1")
        assert digest_tree(long_subvol) == first
        assert len(os.path.basename(revert_temp(long_subvol))) == 33
        crashed = run_cli(["revert", "vm", "s1"], state,
                          env={"SNAPTREE_KILL_AT_LABEL": "btrfs:revert:swapped"})
        assert crashed.returncode == -9, crashed.stderr
        assert os.path.lexists(revert_temp(long_subvol))
        assert api.recover("vm").errors == []
        assert not os.path.lexists(revert_temp(long_subvol))
        assert digest_tree(long_subvol) == first
        assert api.check("vm").clean
        assert len(os.path.basename(snapshot_dir(long_subvol)).encode()) == 255
        api.create("vm", "s2")
        assert api.delete("vm", "s1") == ["s1"]
        assert [s.name for s in api.list("vm")] == ["s2"]
        api.delete("vm", "s2")
        assert api.list("vm") == []
        assert not os.path.lexists(snapshot_dir(long_subvol))
        assert api.check("vm").clean


def test_missing_snapshot_refused_on_revert(subvol):
    volume = plugin.claim(subvol)
    member = snap(volume, ID1)
    plugin.delete([member], ctx_for([volume]))
    with pytest.raises(NotFound, match="missing"):
        revert(member)


# -- interrupted reverts ---------------------------------------------------------------


@pytest.mark.parametrize("label", ["btrfs:revert:made", "btrfs:revert:swapped"])
def test_failed_revert_leftover_is_cleaned(subvol, monkeypatch, label):
    volume = plugin.claim(subvol)
    write_tree(subvol, 1, files=10)
    first = digest_tree(subvol)
    member = snap(volume, ID1)
    write_tree(subvol, 2, files=10)
    second = digest_tree(subvol)
    monkeypatch.setenv("SNAPTREE_FAIL_AT", label)
    with pytest.raises(SnaptreeError, match="injected"):
        plugin.revert([member], ctx_for([volume]))
    monkeypatch.delenv("SNAPTREE_FAIL_AT")
    # either the old or the new tree, whole, and the other under the temporary name
    after = digest_tree(subvol)
    assert after == (first if label.endswith("swapped") else second)
    assert digest_tree(revert_temp(subvol)) == (second if label.endswith("swapped") else first)
    assert plugin.recover_volume(volume) == [
        f"removed the temporary subvolume {revert_temp(subvol)} of an interrupted revert"]
    assert not os.path.lexists(revert_temp(subvol))
    assert plugin.recover_volume(volume) == []
    revert(member)
    assert digest_tree(subvol) == first


# -- end to end through the Snaptree API -------------------------------------------------


def test_group_of_two_subvolumes(btrfs_mount, tmp_path):
    vols = [make_subvolume(os.path.join(btrfs_mount, name)) for name in ("disk-a", "disk-b")]
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"btrfs:{v}" for v in vols])
        for seed, v in enumerate(vols):
            write_tree(v, seed, files=50)
        first = [digest_tree(v) for v in vols]
        api.create("vm", "base")
        for seed, v in enumerate(vols):
            write_tree(v, seed + 10, files=50)
        second = [digest_tree(v) for v in vols]
        api.create("vm", "updated")
        write_tree(vols[0], 99, files=5)
        api.revert("vm", "base")
        assert [digest_tree(v) for v in vols] == first
        api.revert("vm", "updated")
        assert [digest_tree(v) for v in vols] == second
        assert api.check("vm").clean
        # an orphan: a snapshot on disk the catalog does not know
        orphan = snap(plugin.claim(vols[1]), "0000000000000eee")
        drift = api.check("vm")
        assert [o["ref"] for o in drift.orphans] == [orphan.ref]
        plugin.delete([orphan], ctx_for([orphan.volume]))
        # a crash after the swap of a revert: the recover rolls it forward
        crashed = run_cli(["revert", "vm", "base"], state,
                          env={"SNAPTREE_KILL_AT_LABEL": "btrfs:revert:swapped"})
        assert crashed.returncode == -9, crashed.stderr
        assert os.path.lexists(revert_temp(vols[0]))
        report = api.recover("vm")
        assert report.errors == []
        assert not any(os.path.lexists(revert_temp(v)) for v in vols)
        assert [digest_tree(v) for v in vols] == first
        assert api.current("vm").name == "base"
        assert api.check("vm").clean
        api.delete("vm", "base")
        api.delete("vm", "updated")
        assert [plugin.list(plugin.claim(v)) for v in vols] == [[], []]
        assert [digest_tree(v) for v in vols] == first
        assert api.check("vm").clean
