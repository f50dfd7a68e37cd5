"""Crash windows of a live external create, and QEMU users the socket does not tell.

A create killed after QEMU switched the disks to the new overlays but
before snaptree wrote that down leaves QEMU running on overlays that hold
the guest's writes: ``recover`` must merge them down, with QEMU running or
not, never throw them away.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from qemu_fixtures import QemuProcess, make_images, qemu_io, start_daemon
from snaptree import Snaptree
from snaptree.errors import NotSupported
from snaptree_qcow2 import active_image
from snaptree_qcow2.layout import snapshot_dir
import snaptree_qcow2.live as live

pytestmark = pytest.mark.qemu


@pytest.fixture
def folder():
    path = tempfile.mkdtemp(prefix="stq-sw-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _killed_create(state: str, label: str) -> None:
    killed = subprocess.run([sys.executable, "-m", "snaptree", "--state-dir", state,
                             "create", "vm", "e1"], capture_output=True, text=True,
                            env={**os.environ, "SNAPTREE_KILL_AT_LABEL": label})
    assert killed.returncode == -9, killed.stderr


def _overlays(disks):
    return [n for d in disks for n in os.listdir(snapshot_dir(d)) if n.endswith(".qcow2")]


@pytest.mark.parametrize("qemu_at_recover", ["running", "gone"])
def test_guest_writes_after_the_switch_survive_recover(folder, qemu_at_recover):
    disks = make_images(folder, 2)
    for disk in disks:
        qemu_io(disk, "write -P 0x11 0 1M")
    daemon = start_daemon(folder, disks)
    state = os.path.join(folder, "state")
    try:
        with Snaptree(state) as api:
            api.create_group("vm", [f"qcow2:{d}" for d in disks], qmp_socket=daemon.qmp_socket,
                             options={"qcow2.mode": "external"})
        _killed_create(state, "qcow2:switched")
        assert [active_image(d) for d in disks] == disks  # not written down
        for index in range(len(disks)):  # the guest goes on, on the overlays
            subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x22 0 64k",
                            f"nbd+unix:///disk{index}?socket={daemon.nbd_socket}"],
                           check=True, capture_output=True)
        if qemu_at_recover == "gone":
            daemon.quit()
        with Snaptree(state, auto_recover=False) as api:
            report = api.recover("vm")
            assert not report.errors, report
            assert api.list("vm") == [] and api.check("vm").clean
        assert _overlays(disks) == [] and _notes(disks) == []
        assert [active_image(d) for d in disks] == disks
        daemon.quit()
        for disk in disks:  # the guest's writes went into the disk, the rest is as it was
            qemu_io(disk, "read -P 0x22 0 64k")
            qemu_io(disk, "read -P 0x11 64k 960k")
    finally:
        daemon.kill()


def test_a_tag_above_an_external_snapshot_is_refused_before_anything(folder):
    disks = make_images(folder, 1)
    with Snaptree(os.path.join(folder, "state")) as api:
        api.create_group("vm", [f"qcow2:{d}" for d in disks], options={"qcow2.mode": "external"})
        api.create("vm", "e1")
        api.create("vm", "i2", options={"mode": "internal"})
        with pytest.raises(NotSupported, match="internal snapshots taken on top of this one"):
            api.delete("vm", "e1")
        assert [(s.name, s.state.value) for s in api.list("vm")] == [("e1", "complete"),
                                                                       ("i2", "complete")]
        assert api.journal("vm")[0]["operation"] == "create"  # nothing journaled
        api.create("vm", "e3")  # the group is not stuck
        assert api.delete("vm", "e1", children=True) == ["e3", "i2", "e1"]
        assert api.check("vm").clean


def _runas_vm(folder: str, images: list[str]) -> QemuProcess:
    """A VM that drops root with ``-runas`` after opening its QMP socket:
    the socket's peer credentials still say root."""
    qmp = os.path.join(folder, "vm.qmp")
    argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-m", "64", "-accel", "tcg",
            "-qmp", f"unix:{qmp},server=on,wait=off", "-runas", "nobody"]
    for index, image in enumerate(images):
        argv += ["-blockdev", f"driver=file,filename={image},node-name=file{index}",
                 "-blockdev", f"driver=qcow2,file=file{index},node-name=disk{index}",
                 "-device", f"virtio-blk-pci,drive=disk{index},id=vd{index}"]
    return QemuProcess(argv, qmp, images)


@pytest.mark.parametrize("detect", ["proc", "retry"])
def test_a_qemu_that_dropped_root(folder, monkeypatch, detect):
    nobody = pwd.getpwnam("nobody")
    disks = make_images(folder, 2)
    for disk in disks:
        os.chown(disk, nobody.pw_uid, nobody.pw_gid)
        os.chmod(disk, 0o600)
    if detect == "retry":  # as if nothing told the user: "Permission denied" does
        monkeypatch.setattr(live, "_runs_as_another_user", lambda session: False)
    vm = _runas_vm(folder, disks)
    try:
        with Snaptree(os.path.join(folder, "state")) as api:
            api.create_group("vm", [f"qcow2:{d}" for d in disks], qmp_socket=vm.qmp_socket,
                             options={"qcow2.mode": "external"})
            api.create("vm", "e1")
            actives = [active_image(d) for d in disks]
            assert all(os.stat(a).st_uid == nobody.pw_uid for a in actives)
            assert _notes(disks) == []  # the stamps go once 'active' names the overlays
            api.delete("vm", "e1")
            assert [active_image(d) for d in disks] == disks and _overlays(disks) == []
            assert api.check("vm").clean
    finally:
        vm.kill()


def _notes(disks):
    return [n for d in disks for n in os.listdir(snapshot_dir(d)) if n.endswith(".base")]


def _switched_then_gone(folder: str, label: str = "qcow2:switched"):
    """One disk (0x11 everywhere); a create killed at ``label``, after QEMU
    switched to the overlay; the guest writes 0xaa to the first 64k, then
    QEMU is killed.  Returns the disk, the state folder and the daemon."""
    [disk] = make_images(folder, 1)
    qemu_io(disk, "write -P 0x11 0 1M")
    first = os.path.join(folder, "one")
    os.mkdir(first)
    daemon = start_daemon(first, [disk])
    state = os.path.join(folder, "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"qcow2:{disk}"], qmp_socket=daemon.qmp_socket,
                         options={"qcow2.mode": "external"})
    _killed_create(state, label)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xaa 0 64k",
                    f"nbd+unix:///disk0?socket={daemon.nbd_socket}"], check=True,
                   capture_output=True)
    daemon.kill()
    return disk, state, daemon


def _refused(state: str, why: str) -> None:
    with Snaptree(state, auto_recover=False) as api:
        report = api.recover("vm")
    assert len(report.errors) == 1, report
    assert why in report.errors[0] and "could put older data over newer" in report.errors[0]


def _merged(state: str, disk: str) -> None:
    with Snaptree(state, auto_recover=False) as api:
        report = api.recover("vm")
        assert not report.errors, report
        assert api.list("vm") == [] and api.check("vm").clean
    assert _overlays([disk]) == [] and _notes([disk]) == [] and active_image(disk) == disk
    qemu_io(disk, "read -P 0xaa 0 64k")  # the guest's writes after the switch went in
    qemu_io(disk, "read -P 0x11 64k 960k")


def test_a_vm_restarted_on_the_old_image_is_not_overwritten_by_recover(folder):
    """Killed at the switch, QEMU dies too, the VM is started again on the
    image 'active' names and writes there: recover must not merge the
    overlay's older writes over that newer data; it keeps both and says so."""
    disk, state, daemon = _switched_then_gone(folder)
    try:
        qemu_io(disk, "write -P 0xbb 0 1M")  # the VM, started again on the disk, writes
        _refused(state, f"{disk} was written after the switch")
        qemu_io(disk, "read -P 0xbb 0 1M")  # the newer data is intact
        assert len(_overlays([disk])) == 1  # and the older writes are kept for a person to decide
        [overlay] = [os.path.join(snapshot_dir(disk), n) for n in _overlays([disk])]
        os.unlink(overlay)  # as the error advises
        with Snaptree(state, auto_recover=False) as api:
            assert not api.recover("vm").errors
            assert api.list("vm") == [] and api.check("vm").clean
        assert _notes([disk]) == []
        qemu_io(disk, "read -P 0xbb 0 1M")
    finally:
        daemon.kill()


def test_a_restart_on_a_clock_behind_is_not_overwritten_either(folder):
    """The VM is started again on the old image by a host whose clock is an
    hour behind (an RTC after a reboot): the image's writes look older than
    the overlay's.  Comparing the two times, recover merged the overlay over
    the newer data; the stamp taken at the switch tells it was written."""
    disk, state, daemon = _switched_then_gone(folder)
    try:
        qemu_io(disk, "write -P 0xbb 0 1M")
        overlay_mtime = os.stat(os.path.join(snapshot_dir(disk), _overlays([disk])[0])).st_mtime_ns
        written = os.stat(disk)
        # what that clock stamped on the write
        os.utime(disk, ns=(written.st_atime_ns, overlay_mtime - 3600 * 10**9))
        _refused(state, f"{disk} was written after the switch")
        qemu_io(disk, "read -P 0xbb 0 1M")
        assert len(_overlays([disk])) == 1
    finally:
        daemon.kill()


def test_an_overlay_written_on_a_clock_stepped_back_is_merged(folder):
    """The host's clock was stepped back an hour while the guest wrote to
    the overlay (NTP correcting a clock that ran fast): the overlay looks
    older than the image below, which nobody touched since the switch.
    Comparing the two times, recover refused and left the group stuck;
    the stamp taken at the switch lets it merge."""
    disk, state, daemon = _switched_then_gone(folder)
    try:
        overlay = os.path.join(snapshot_dir(disk), _overlays([disk])[0])
        written = os.stat(overlay)
        os.utime(overlay, ns=(written.st_atime_ns, os.stat(disk).st_mtime_ns - 3600 * 10**9))
        _merged(state, disk)
    finally:
        daemon.kill()


def test_killed_before_the_stamp_recover_keeps_both(folder):
    """Killed after the switch but before the image below was stamped, QEMU
    gone: nothing tells whether a VM wrote that image since, so recover
    leaves both; removing the overlay lets it finish."""
    disk, state, daemon = _switched_then_gone(folder, "qcow2:unstamped")
    try:
        assert _notes([disk]) == []
        _refused(state, f"snaptree has no record of {disk} at the switch")
        qemu_io(disk, "read -P 0x11 0 1M")
        for name in _overlays([disk]):
            os.unlink(os.path.join(snapshot_dir(disk), name))
        with Snaptree(state, auto_recover=False) as api:
            assert not api.recover("vm").errors and api.check("vm").clean
    finally:
        daemon.kill()
