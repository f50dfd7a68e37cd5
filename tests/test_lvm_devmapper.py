"""The lvm backend on real LVM: thick and thin snapshots, merges, overflow, kpartx.

These need device-mapper; on a kernel without it they skip and
``tests/test_lvm_guest.py`` runs them inside a virtme-ng guest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from guest.lvm_env import (
    DEVMAPPER_MARKS,
    digest_device,
    lvm_vg,
    make_lv,
    write_pattern,
)
from snaptree import Snaptree
from snaptree.errors import CommandFailed, NotSupported, OutOfSpace, SnaptreeError, VolumeInUse
from snaptree.testing import run_cli
from test_lvm_names import _longest_accepted  # the same probe the host tests use

pytestmark = DEVMAPPER_MARKS + [pytest.mark.slow]
__all__ = ["lvm_vg", "make_lv"]  # fixtures used through pytest

MIB = 1024 * 1024


@pytest.fixture
def api(tmp_path):
    with Snaptree(str(tmp_path / "state")) as api:
        yield api


def _backend(api):
    """The LvmBackend instance the API dispatches to (for fault injection)."""
    for plugin in api.plugins.pm.get_plugins():
        if type(plugin).__name__ == "LvmBackend":
            return plugin
    raise AssertionError("lvm backend not loaded")


def _listed(api, spec):
    volume = api.claim(spec)
    return api.plugins.hook.snaptree_list(backend="lvm", volume=volume)


def _read(device: str, offset: int, length: int) -> bytes:
    with open(device, "rb", buffering=0) as f:
        f.seek(offset)
        return f.read(length)


# thick volumes get the same checks from the conformance kit and the deferred-merge test;
# one thick run here costs more than half a minute of emulated CPU
@pytest.mark.parametrize("thin", [True], ids=["thin"])
def test_revert_is_exact_and_keeps_every_snapshot(api, make_lv, lvm_vg, thin):
    vg, lv, device = make_lv(16, thin=thin)
    spec = f"lvm:{vg}/{lv}"
    # full-size copy-on-write: the merges below rewrite more than the default fifth
    api.create_group("g", [spec], options={"lvm.snapshot_size": "100%ORIGIN"})
    write_pattern(device, 1, offset=3 * MIB)
    first = _read(device, 0, 16 * MIB)
    api.create("g", "one")
    write_pattern(device, 2, offset=5 * MIB, length=2 * MIB)
    second = _read(device, 0, 16 * MIB)
    api.create("g", "two")
    write_pattern(device, 3, offset=0, length=4 * MIB)

    api.revert("g", "one")
    assert _read(device, 0, 16 * MIB) == first
    listed = {m.snapshot_id: m for m in _listed(api, spec)}
    assert set(listed) == {s.snapshot_id for s in api.list("g")}, "every snapshot survives"
    assert all(m.valid for m in listed.values())
    assert {m.data["kind"] for m in listed.values()} == {"thin" if thin else "thick"}
    if thin:
        # thin snapshots skip activation until someone needs them
        assert not any(m.data["active"] for m in listed.values())
    api.revert("g", "two")
    assert _read(device, 0, 16 * MIB) == second
    api.revert("g", "one")
    assert _read(device, 0, 16 * MIB) == first
    assert len(_listed(api, spec)) == 2
    assert api.check("g").clean
    if not thin:  # an inactive thin snapshot reports no data%
        used = api.space_used("g", "two")
        assert all(u.exclusive_bytes is not None for u in used.values())


def test_overflowed_thick_snapshot_is_invalid_and_never_reverted(api, make_lv):
    vg, lv, device = make_lv(16)
    spec = f"lvm:{vg}/{lv}"
    api.create_group("g", [spec], options={"lvm.snapshot_size": "4M"})
    write_pattern(device, 1)
    api.create("g", "small")
    write_pattern(device, 2, length=12 * MIB)  # more changed blocks than 4 MiB of COW holds
    after = digest_device(device)
    (member,) = _listed(api, spec)
    assert member.valid is False
    with pytest.raises(NotSupported, match="invalid"):
        api.revert("g", "small")
    assert digest_device(device) == after, "a refused revert changes nothing"
    api.delete("g", "small")
    assert _listed(api, spec) == []


def test_bad_snapshot_size_option_refused_before_any_command(api, make_lv):
    vg, lv, _device = make_lv(8)
    api.create_group("g", [f"lvm:{vg}/{lv}"], options={"lvm.snapshot_size": "lots"})
    with pytest.raises(SnaptreeError, match="lvm.snapshot_size"):
        api.create("g", "x")
    assert api.list("g") == []


def test_thin_revert_refused_while_open(api, make_lv):
    vg, lv, device = make_lv(8, thin=True)
    spec = f"lvm:{vg}/{lv}"
    api.create_group("g", [spec])
    write_pattern(device, 1)
    wanted = digest_device(device)
    api.create("g", "one")
    write_pattern(device, 2)
    before = digest_device(device)
    holder = os.open(device, os.O_RDONLY)
    try:
        with pytest.raises(VolumeInUse, match="open"):
            api.revert("g", "one")
    finally:
        os.close(holder)
    assert digest_device(device) == before
    api.revert("g", "one")  # closed now: the swap goes ahead
    assert digest_device(device) == wanted
    assert len(_listed(api, spec)) == 1


def test_deferred_thick_merge_is_reported_and_finished_by_recover(api, make_lv, lvm_vg):
    vg, lv, device = make_lv(16)
    spec = f"lvm:{vg}/{lv}"
    api.create_group("g", [spec])
    write_pattern(device, 1)
    wanted = digest_device(device)
    api.create("g", "one")
    api.create("g", "two")
    write_pattern(device, 2)
    changed = digest_device(device)
    holder = os.open(device, os.O_RDONLY)  # like a running VM
    try:
        api.revert("g", "one")
        origin = lvm_vg.cmds.lv(vg, lv)
        assert origin.is_merging, "LVM deferred the merge while the origin is open"
        assert any(t.startswith("snaptree-deferred.") for t in origin.tags)
        report = api.recover("g")
        assert any("still pending" in line for line in report.actions)
    finally:
        os.close(holder)
    assert digest_device(device) == changed, "a deferred merge leaves the content alone"
    report = api.recover("g")
    assert any("finished the deferred merge" in line for line in report.actions), report.actions
    assert any("re-created" in line for line in report.actions)
    assert digest_device(device) == wanted
    listed = _listed(api, spec)
    assert len(listed) == 2 and all(m.valid for m in listed)
    assert not lvm_vg.cmds.lv(vg, lv).tags
    write_pattern(device, 3)
    api.revert("g", "one")  # the re-created snapshot reverts like the original
    assert digest_device(device) == wanted


def _revert_stopped_at(api, make_lv, monkeypatch, stop):
    """A thin LV with snapshot "one" (of pattern 1, then overwritten) whose
    revert fails at the first command ``stop(argv)`` picks, as a crash there
    would leave it.  Returns (vg, lv, device, digest of pattern 1)."""
    vg, lv, device = make_lv(8, thin=True)
    api.create_group("g", [f"lvm:{vg}/{lv}"])
    write_pattern(device, 1)
    wanted = digest_device(device)
    api.create("g", "one")
    write_pattern(device, 2)
    runner = _backend(api).commands.runner
    real_run = runner.run

    def failing_run(argv, **kwargs):
        if stop(argv, lv):
            raise runner.failure(argv, 5, "injected: stopped here")
        return real_run(argv, **kwargs)

    monkeypatch.setattr(runner, "run", failing_run)
    with pytest.raises(CommandFailed, match="injected"):
        api.revert("g", "one")
    monkeypatch.setattr(runner, "run", real_run)
    return vg, lv, device, wanted


def test_interrupted_thin_swap_is_finished_by_recover(api, make_lv, lvm_vg, monkeypatch):
    # the new LV never gets the origin's name (a crash between the renames)
    vg, lv, device, wanted = _revert_stopped_at(
        api, make_lv, monkeypatch, lambda argv, lv: "lvrename" in argv and argv[-1] == lv)
    names = set(lvm_vg.cmds.lv_map(vg))
    assert lv not in names, "the fault left the origin parked"
    report = api.recover("g")
    assert report.errors == []
    assert any("finished an interrupted revert" in line for line in report.actions)
    assert digest_device(device) == wanted
    leftovers = [n for n in lvm_vg.cmds.lv_map(vg) if n.startswith(lv + ".snaptree-")]
    assert leftovers == []
    assert len(_listed(api, f"lvm:{vg}/{lv}")) == 1


def test_recover_makes_again_the_node_a_crash_lost(api, make_lv, lvm_vg, monkeypatch):
    """A thin swap stopped after its renames (the parked origin not yet
    removed) whose /dev/VG/LV link is gone, as a kill inside ``lvrename`` can
    leave it: recover removes the leftover and makes the node again."""
    vg, lv, device, wanted = _revert_stopped_at(
        api, make_lv, monkeypatch,
        lambda argv, lv: "lvremove" in argv and ".snaptree-old." in argv[-1])
    assert lvm_vg.cmds.lv(vg, lv).is_active
    os.unlink(device)  # the node the crash lost
    report = api.recover("g")
    assert report.errors == []
    assert any(line.endswith(".snaptree-old." + api.info("g", "one").snapshot_id)
               and "removed leftover" in line for line in report.actions), report.actions
    assert os.path.exists(device)
    assert digest_device(device) == wanted


def _write_mbr(device: str, partitions: list[tuple[int, int]]) -> None:
    """A DOS partition table of Linux partitions given as (first sector, sectors).

    Written by hand so the test needs no fdisk; kpartx reads the LBA fields.
    """
    table = bytearray(512)
    for index, (first, count) in enumerate(partitions):
        entry = bytes([0x00, 0xFE, 0xFF, 0xFF, 0x83, 0xFE, 0xFF, 0xFF])
        entry += first.to_bytes(4, "little") + count.to_bytes(4, "little")
        table[446 + 16 * index: 446 + 16 * (index + 1)] = entry
    table[510:512] = b"\x55\xaa"
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(table), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _partition(device: str, mount_dir: str, lvm_vg) -> list[str]:
    """Two partitions with ext4 filesystems holding one file each."""
    sectors = _sectors(device)
    _write_mbr(device, [(2048, 12288), (14336, sectors - 14336)])
    maps = lvm_vg.cmds.tool(["kpartx", "-a", "-s", "-v", device])
    parts = ["/dev/mapper/" + line.split()[2] for line in maps.splitlines()
             if line.startswith("add map")]
    assert len(parts) == 2, maps
    for index, part in enumerate(parts, 1):
        subprocess.run(["mkfs.ext4", "-q", "-F", part], check=True, capture_output=True)
        _write_file(part, mount_dir, f"partition {index} version 1\n")
    lvm_vg.cmds.tool(["kpartx", "-d", "-s", device])
    return parts


def _sectors(device: str) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END) // 512
    finally:
        os.close(fd)


def _write_file(part: str, mount_dir: str, text: str) -> None:
    subprocess.run(["mount", part, mount_dir], check=True, capture_output=True)
    try:
        with open(os.path.join(mount_dir, "note.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    finally:
        subprocess.run(["umount", mount_dir], check=True, capture_output=True)


@pytest.mark.parametrize("thin", [False, True], ids=["thick", "thin"])
def test_map_exposes_old_partitions_read_only(api, make_lv, lvm_vg, tmp_path, thin):
    vg, lv, device = make_lv(24, thin=thin)
    mount_dir = str(tmp_path / "mnt")
    os.mkdir(mount_dir)
    parts = _partition(device, mount_dir, lvm_vg)
    api.create_group("g", [f"lvm:{vg}/{lv}"])
    api.create("g", "old")
    lvm_vg.cmds.tool(["kpartx", "-a", "-s", device])
    _write_file(parts[1], mount_dir, "partition 2 version 2\n")
    lvm_vg.cmds.tool(["kpartx", "-d", "-s", device])

    if thin:  # through the CLI, as a user would
        mapped = run_cli(["map", "g", "old"], api.state_dir)
        assert mapped.returncode == 0, mapped.stderr
        devices = [line.strip() for line in mapped.stdout.splitlines() if "/dev/mapper/" in line]
    else:  # through the library (a CLI start costs ~10 s under an emulated CPU)
        (member,) = api.info("g", "old").members
        devices = list(api.plugins.hook.snaptree_map_snapshot(backend="lvm", member=member))
    assert len(devices) == 2 and all(os.path.exists(d) for d in devices), mapped.stdout
    ro = subprocess.run(["blockdev", "--getro", devices[1]], capture_output=True, text=True)
    assert ro.stdout.strip() == "1", "partition maps of a snapshot are read-only"
    subprocess.run(["mount", "-o", "ro,noload", devices[1], mount_dir], check=True)
    try:
        with open(os.path.join(mount_dir, "note.txt"), encoding="utf-8") as f:
            assert f.read() == "partition 2 version 1\n"
    finally:
        subprocess.run(["umount", mount_dir], check=True)
    if thin:
        unmapped = run_cli(["unmap", "g", "old"], api.state_dir)
        assert unmapped.returncode == 0, unmapped.stderr
    else:
        removed = api.plugins.hook.snaptree_unmap_snapshot(backend="lvm", member=member)
        assert sorted(removed) == sorted(devices)
    assert not any(os.path.exists(d) for d in devices)
    if thin:
        (member,) = _listed(api, f"lvm:{vg}/{lv}")
        assert member.data["active"] is False, "unmap deactivates a thin snapshot again"


def test_thin_pool_out_of_space(api, lvm_vg):
    vg = lvm_vg.vg
    pool, lv = lvm_vg.unique("tinypool"), lvm_vg.unique("starved")
    cmds = lvm_vg.cmds
    cmds.lvm("lvcreate", "-y", "--type", "thin-pool", "-L", "8M", "-n", pool, vg)
    cmds.lvm("lvchange", "--errorwhenfull", "y", f"{vg}/{pool}")
    try:
        cmds.lvm("lvcreate", "-y", "-V", "32M", "-T", f"{vg}/{pool}", "-n", lv)
        device = lvm_vg.device(lv)
        api.create_group("g", [f"lvm:{vg}/{lv}"])
        write_pattern(device, 1, length=4 * MIB)
        api.create("g", "half")
        with pytest.raises(OSError):
            write_pattern(device, 2, length=12 * MIB)  # more than the pool holds
        assert cmds.lv(vg, pool).data_percent == 100.0
        with pytest.raises(OutOfSpace):
            api.create("g", "full")
        assert [s.name for s in api.list("g")] == ["half"]
        assert len(_listed(api, f"lvm:{vg}/{lv}")) == 1
    finally:
        lvm_vg.remove_family(lv)
        cmds.remove(vg, pool)


# -- reverts of thick volumes that are inactive, overflowed or mapped --------------------


def _member_lv(api, group, snapshot):
    (member,) = api.info(group, snapshot).members
    return member.ref.split("/", 1)[1]


def test_thick_revert_of_an_inactive_origin_merges_now_and_keeps_the_snapshot(api, make_lv,
                                                                               lvm_vg):
    """An inactive origin (VM stopped, LV deactivated) is activated for the
    merge: LVM would otherwise run it at the next activation, out of sight,
    and consume the snapshot."""
    vg, lv, device = make_lv(16)
    cmds = lvm_vg.cmds
    api.create_group("g", [f"lvm:{vg}/{lv}"])
    write_pattern(device, 1)
    wanted = digest_device(device)
    api.create("g", "one")
    write_pattern(device, 2)
    cmds.deactivate(vg, lv)
    api.revert("g", "one")
    assert api.warnings == []
    origin = cmds.lv(vg, lv)
    assert not origin.is_active, "the origin is left inactive, as it was found"
    assert not origin.is_merging and not origin.tags
    cmds.lvm("lvchange", "-ay", f"{vg}/{lv}")  # the VM's toolstack starts it again
    assert digest_device(device) == wanted
    assert cmds.lv(vg, _member_lv(api, "g", "one")) is not None, "the snapshot survived"
    report = api.recover("g")
    assert report.errors == [] and report.actions == []
    assert api.check("g").clean
    write_pattern(device, 3)
    api.revert("g", "one")
    assert digest_device(device) == wanted


def test_overflowed_snapshot_of_an_inactive_origin_is_never_reverted(api, make_lv, lvm_vg):
    """Only an active snapshot shows that it overflowed: the revert looks
    inside an inactive origin before anything changes."""
    vg, lv, device = make_lv(16)
    cmds = lvm_vg.cmds
    api.create_group("g", [f"lvm:{vg}/{lv}"], options={"lvm.snapshot_size": "4M"})
    write_pattern(device, 1)
    api.create("g", "small")
    write_pattern(device, 2, length=12 * MIB)  # more changed blocks than 4 MiB of COW holds
    after = digest_device(device)
    cmds.deactivate(vg, lv)
    with pytest.raises(NotSupported, match="invalid"):
        api.revert("g", "small")
    origin = cmds.lv(vg, lv)
    assert not origin.is_active and not origin.is_merging and not origin.tags
    snap = cmds.lv(vg, _member_lv(api, "g", "small"))
    assert snap is not None and not snap.is_merging
    cmds.activate(vg, lv)
    assert digest_device(device) == after, "a refused revert changes nothing"
    api.delete("g", "small")


@pytest.mark.parametrize("finish", ["recover", "delete"])
def test_deferred_merge_whose_snapshot_overflows_is_a_failed_revert(api, make_lv, lvm_vg,
                                                                    monkeypatch, finish):
    """The origin is open, so LVM defers the merge; the VM keeps writing
    until the snapshot overflows and the merge can never run.  recover (or
    deleting the snapshot) says the revert failed, removes the invalid
    snapshot and frees the group, instead of waiting for a merge forever."""
    from snaptree_lvm import revert as lvm_revert

    monkeypatch.setattr(lvm_revert, "MERGE_TIMEOUT", 60.0)  # a regression fails in a minute
    vg, lv, device = make_lv(16)
    cmds = lvm_vg.cmds
    api.create_group("g", [f"lvm:{vg}/{lv}"], options={"lvm.snapshot_size": "4M"})
    write_pattern(device, 1)
    api.create("g", "one")
    name = _member_lv(api, "g", "one")
    write_pattern(device, 2)
    api.create("g", "later")
    holder = os.open(device, os.O_RDWR)  # the running VM
    try:
        api.revert("g", "one")
        assert any("deferred" in w for w in api.warnings), api.warnings
        assert api.current("g").name == "one"
        write_pattern(device, 3, offset=2 * MIB, length=12 * MIB)  # the VM keeps writing
        assert cmds.lv(vg, name).is_invalid
        report = api.recover("g")
        assert report.errors == []
        assert any("overflowed" in line and "close the volume" in line
                   for line in report.actions), report.actions
        # the volume kept its content: the catalog's current is what it was before the revert
        assert any("'later' is current again" in line for line in report.actions), report
        assert api.current("g").name == "later"
        assert [e["status"] for e in api.journal("g") if e["operation"] == "revert"] == ["failed"]
    finally:
        os.close(holder)
    written = digest_device(device)
    if finish == "recover":
        report = api.recover("g")
        assert report.errors == []
        assert any("failed" in line and "keeps its current content" in line
                   and "removed" in line for line in report.actions), report.actions
        api.delete("g", "one")
    else:
        api.delete("g", "one")
    assert cmds.lv(vg, name) is None
    origin = cmds.lv(vg, lv)
    assert not origin.is_merging and not origin.tags
    assert digest_device(device) == written, "the volume keeps what the VM wrote"
    assert api.current("g").name == "later"
    api.create("g", "two")
    assert [s.name for s in api.list("g")] == ["later", "two"]
    assert api.parent("g", "two").name == "later"
    assert api.recover("g").errors == []


def _revert_killed_before(api, group: str, snapshot: str, stop) -> None:
    """Revert in a forked child that SIGKILLs itself just before the first
    LVM command ``stop(argv)`` picks, as a crash there would leave it."""
    state_dir = api.state_dir
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            with Snaptree(state_dir) as child:
                runner = _backend(child).commands.runner
                real_run = runner.run

                def run(argv, **kwargs):
                    if stop(argv):
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real_run(argv, **kwargs)

                runner.run = run
                child.revert(group, snapshot)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _after(command: str):
    """A ``stop`` for :func:`_revert_killed_before`: the command after ``lvm COMMAND``."""
    seen = []

    def stop(argv):
        if seen:
            return True
        if argv[:2] == ["lvm", command]:
            seen.append(argv)
        return False

    return stop


def _wait_gone(cmds, vg: str, name: str) -> None:
    """Wait until a merging snapshot LV is gone (LVM finishes a merge in the background)."""
    deadline = time.monotonic() + 60
    while cmds.lv(vg, name) is not None and time.monotonic() < deadline:
        time.sleep(1)


@pytest.mark.parametrize("kill", ["before-remake", "after-merge-command"])
def test_thick_revert_killed_after_the_merge_never_remakes_the_snapshot_from_later_data(
        api, make_lv, lvm_vg, kill):
    """A crash between the merge and the re-creation of the snapshot, then
    somebody writes to the volume before recover: the snapshot recover
    re-creates must hold the snapshot's content, or not be re-created."""
    vg, lv, device = make_lv(16)
    cmds = lvm_vg.cmds
    spec = f"lvm:{vg}/{lv}"
    api.create_group("g", [spec])
    write_pattern(device, 1)
    wanted = digest_device(device)
    api.create("g", "one")
    name = _member_lv(api, "g", "one")
    write_pattern(device, 2)
    if kill == "before-remake":
        stop = lambda argv: argv[:2] == ["lvm", "lvcreate"] and "-s" in argv  # noqa: E731
    else:
        stop = _after("lvconvert")
    _revert_killed_before(api, "g", "one", stop)
    if not cmds.lv(vg, lv).is_active:
        cmds.lvm("lvchange", "-ay", f"{vg}/{lv}")  # the VM's toolstack starts it again
    try:
        write_pattern(device, 3)  # the VM writes before anybody runs recover
        wrote = True
    except OSError:
        wrote = False
    report = api.recover("g")
    assert report.errors == [], report
    snap = cmds.lv(vg, name)
    if snap is not None and not snap.is_merging:
        assert digest_device(f"/dev/{vg}/{name}") == wanted, \
            "the re-created snapshot holds the snapshot's content, not what was written later"
    else:
        assert any("not re-created" in line for line in report.actions), report.actions
        _wait_gone(cmds, vg, name)
    if kill == "before-remake":  # the origin was read-only from the merge on
        assert not wrote and snap is not None
        assert digest_device(device) == wanted
    origin = cmds.lv(vg, lv)
    assert origin.is_writable and not origin.tags
    write_pattern(device, 4)  # writable again
    if snap is not None:
        api.revert("g", "one")
        assert digest_device(device) == wanted


@pytest.mark.parametrize("meanwhile", ["closed", "opened"])
def test_crash_after_activating_an_inactive_origin_deactivates_it_in_recover(api, make_lv,
                                                                               lvm_vg, meanwhile):
    """revert activates an inactive origin for the merge; after a crash
    there, recover deactivates it again unless somebody opened it since."""
    vg, lv, device = make_lv(16)
    cmds = lvm_vg.cmds
    api.create_group("g", [f"lvm:{vg}/{lv}"])
    write_pattern(device, 1)
    wanted = digest_device(device)
    api.create("g", "one")
    write_pattern(device, 2)
    cmds.deactivate(vg, lv)
    _revert_killed_before(api, "g", "one", lambda argv: "--addtag" in argv and any(
        a.startswith("snaptree-remake.") for a in argv))
    assert cmds.lv(vg, lv).is_active, "the crash left the origin active"
    holder = os.open(device, os.O_RDONLY) if meanwhile == "opened" else None
    try:
        report = api.recover("g")
        assert report.errors == [], report
        if holder is not None:  # left active; the revert redone is deferred, as for a VM
            origin = cmds.lv(vg, lv)
            assert origin.is_active and origin.is_merging
    finally:
        if holder is not None:
            os.close(holder)
    if holder is not None:
        assert api.recover("g").errors == []
    origin = cmds.lv(vg, lv)
    assert origin.is_active == (meanwhile == "opened")
    assert not origin.tags and origin.is_writable
    cmds.activate(vg, lv)
    assert digest_device(device) == wanted, "recover finished the revert"
    assert cmds.lv(vg, _member_lv(api, "g", "one")) is not None


def _mbr_with_one_partition(device: str) -> None:
    _write_mbr(device, [(2048, 8192)])


def test_delete_of_a_mapped_snapshot_is_refused_before_anything_changes(api, make_lv):
    vg, lv, device = make_lv(16, thin=True)
    _mbr_with_one_partition(device)
    api.create_group("g", [f"lvm:{vg}/{lv}"])
    api.create("g", "one")
    (member,) = api.info("g", "one").members
    mapped = api.plugins.hook.snaptree_map_snapshot(backend="lvm", member=member)
    assert len(mapped) == 1
    with pytest.raises(VolumeInUse, match=r"unmap it first \(snaptree unmap g one\)"):
        api.delete("g", "one")
    assert api.info("g", "one").state.value == "complete", "not left 'deleting'"
    api.create("g", "two")  # the group is not blocked
    api.plugins.hook.snaptree_unmap_snapshot(backend="lvm", member=member)
    api.delete("g", "one")
    assert [s.name for s in api.list("g")] == ["two"]


def test_a_failed_lvremove_of_a_held_snapshot_is_volume_in_use(make_lv, lvm_vg):
    """LVM's "is used by another device" (a kpartx map holds the LV) is VolumeInUse."""
    vg, lv, device = make_lv(16, thin=True)
    _mbr_with_one_partition(device)
    cmds = lvm_vg.cmds
    cmds.create_thin_snapshot(vg, lv, lv + ".held")
    cmds.activate(vg, lv + ".held")
    held = f"/dev/mapper/{vg}-{lv}.held"
    cmds.tool(["kpartx", "-a", "-r", "-s", held])
    try:
        with pytest.raises(VolumeInUse, match="used by another device"):
            cmds.remove(vg, lv + ".held")
    finally:
        cmds.tool(["kpartx", "-d", "-s", held])


@pytest.mark.parametrize("unit", ["n", "n-"], ids=["plain", "hyphens"])
def test_longest_accepted_thin_name_reverts(api, lvm_vg, unit):
    """Every name snaptree derives from the longest LV name it accepts fits
    LVM (``vg/lv`` under 128) and device-mapper (hyphens doubled)."""
    vg = lvm_vg.vg
    lv = _longest_accepted(vg, unit)
    device = lvm_vg.create(lv, 8, thin=True)
    try:
        api.create_group("g", [f"lvm:{vg}/{lv}"])
        write_pattern(device, 1)
        wanted = digest_device(device)
        api.create("g", "one")
        write_pattern(device, 2)
        api.revert("g", "one")
        assert digest_device(device) == wanted
        api.delete("g", "one")
    finally:
        lvm_vg.remove_family(lv)


def test_thin_revert_keeps_the_volumes_tags_and_activation_settings(api, make_lv, lvm_vg):
    vg, lv, device = make_lv(8, thin=True)
    cmds = lvm_vg.cmds
    cmds.lvm("lvchange", "--addtag", "vmhost1", "--addtag", "owner=ops", f"{vg}/{lv}")
    cmds.lvm("lvchange", "--setautoactivation", "n", f"{vg}/{lv}")
    cmds.set_skip_activation(vg, lv, True)
    api.create_group("g", [f"lvm:{vg}/{lv}"])
    write_pattern(device, 1)
    wanted = digest_device(device)
    api.create("g", "one")
    write_pattern(device, 2)
    before = cmds.lv(vg, lv)
    api.revert("g", "one")
    after = cmds.lv(vg, lv)
    assert after.uuid != before.uuid, "a new LV took the volume's place"
    assert sorted(after.tags) == ["owner=ops", "vmhost1"]
    assert after.skips_activation
    assert cmds.autoactivation(vg, lv) is False
    assert after.is_active, "active before, active after"
    assert digest_device(device) == wanted


def test_out_of_space_names_the_lvm_command(api, lvm_vg):
    """The runner reports LVM's "insufficient free space" as OutOfSpace itself; the
    message still names the LVM command (lvcreate), not the 'lvm' binary."""
    vg, cmds = lvm_vg.vg, lvm_vg.cmds
    lv = lvm_vg.unique("big")
    # a full-size snapshot of an LV bigger than half the free space cannot fit (an absolute
    # size: LVM trims a percentage to the space there is)
    mib = cmds.vg_free_bytes(vg) // MIB // 2 + 8
    lvm_vg.create(lv, mib, zero=False)
    try:
        api.create_group("g", [f"lvm:{vg}/{lv}"], options={"lvm.snapshot_size": f"{mib}M"})
        with pytest.raises(OutOfSpace, match=r"(?i)^lvm: lvcreate failed: .*insufficient"):
            api.create("g", "huge")
        assert api.list("g") == []
    finally:
        lvm_vg.remove_family(lv)
