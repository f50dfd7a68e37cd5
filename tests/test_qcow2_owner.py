"""Images snaptree makes for a VM that runs as another user stay usable by that user."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from qemu_fixtures import QemuProcess, make_images, peer_pid
from snaptree import Snaptree
from snaptree.errors import BackendError, QMPFailed
from snaptree_qcow2 import active_image
from snaptree_qcow2.header import snapshot_names
from snaptree_qcow2.layout import snapshot_dir
from snaptree_qcow2.qmp import QMPSession, fail_on_command

pytestmark = [pytest.mark.qemu, pytest.mark.root]


@pytest.fixture
def vm_user():
    if not shutil.which("runuser"):
        pytest.skip("needs runuser")
    return pwd.getpwnam("nobody")


@pytest.fixture
def folder():
    """A folder every user can enter (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="stq-owner-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _write_as(user, image: str, seed: int) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user.pw_name, "--", "qemu-io", "-f", "qcow2", "-c",
                           f"write -P {seed} 0 4k", image], capture_output=True, text=True)


def test_overlays_belong_to_the_image_owner(folder, vm_user):
    """... and carry its extended attributes: the label a confined QEMU needs to open them."""
    [disk] = make_images(folder, 1)
    os.chown(disk, vm_user.pw_uid, vm_user.pw_gid)
    os.chmod(disk, 0o600)
    os.setxattr(disk, "user.label", b"svirt_image_t:s0:c7,c9")
    os.setxattr(disk, "trusted.snaptree-test", b"kept")
    labels = {name: os.getxattr(disk, name) for name in os.listxattr(disk)}
    with Snaptree(os.path.join(folder, "state")) as api:
        api.create_group("vm", [f"qcow2:{disk}"], options={"qcow2.mode": "external"})
        api.create("vm", "e1")
        steps = [lambda: None, lambda: api.revert("vm", "e1"),
                 lambda: (api.create("vm", "i2", options={"mode": "internal"}),
                          api.create("vm", "e3"), api.revert("vm", "i2"))]
        for seed, step in enumerate(steps, 1):
            step()
            image = active_image(disk)
            assert image != disk
            done = _write_as(vm_user, image, seed)
            assert done.returncode == 0 and "Permission denied" not in done.stdout, done.stdout
            found = os.stat(image)
            assert (found.st_uid, found.st_gid) == (vm_user.pw_uid, vm_user.pw_gid)
            assert stat.S_IMODE(found.st_mode) == 0o600
            assert {name: os.getxattr(image, name) for name in os.listxattr(image)} == labels
        # the folder stays root's: the VM user passes through it, cannot write in it
        found = os.stat(snapshot_dir(disk))
        assert (found.st_uid, stat.S_IMODE(found.st_mode)) == (0, 0o711)
        planted = subprocess.run(["runuser", "-u", vm_user.pw_name, "--", "ln", "-s", "/etc/passwd",
                                  os.path.join(snapshot_dir(disk), "active.partial")],
                                 capture_output=True, text=True)
        assert planted.returncode != 0 and "Permission denied" in planted.stderr
        assert all(os.stat(os.path.join(snapshot_dir(disk), name)).st_uid == vm_user.pw_uid
                   for name in os.listdir(snapshot_dir(disk)) if name.endswith(".qcow2"))


def test_a_folder_another_user_can_write_to_is_refused(folder, vm_user):
    """As root, snaptree creates and renames files in the folder: one the VM
    user could write to would let that user point those names anywhere."""
    [disk] = make_images(folder, 1)
    os.chown(disk, vm_user.pw_uid, vm_user.pw_gid)
    victim = os.path.join(folder, "victim")
    with open(victim, "w") as handle:
        handle.write("root's own data")
    with Snaptree(os.path.join(folder, "state")) as api:
        api.create_group("vm", [f"qcow2:{disk}"], options={"qcow2.mode": "external"})
        api.create("vm", "e1")
        os.chown(snapshot_dir(disk), vm_user.pw_uid, vm_user.pw_gid)  # as an older layout had it
        os.symlink(victim, os.path.join(snapshot_dir(disk), "active.partial"))
        with pytest.raises(BackendError, match="only uid 0 .* owns and can write to"):
            api.create("vm", "e2")
        assert [s.name for s in api.list("vm")] == ["e1"]
    with open(victim) as handle:
        assert handle.read() == "root's own data"


def _daemon_as(user, folder: str, images: list[str]) -> QemuProcess:
    """A qemu-storage-daemon running as ``user``, exporting ``images`` over
    NBD (as a VM uses them), its sockets in a folder of that user's."""
    sockets = os.path.join(folder, "run")
    os.mkdir(sockets)
    os.chown(sockets, user.pw_uid, user.pw_gid)
    qmp, nbd = os.path.join(sockets, "qmp"), os.path.join(sockets, "nbd")
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--",
            "qemu-storage-daemon",
            "--chardev", f"socket,path={qmp},server=on,wait=off,id=monitor",
            "--monitor", "chardev=monitor",
            "--nbd-server", f"addr.type=unix,addr.path={nbd}"]
    for index, image in enumerate(images):
        argv += ["--blockdev", f"driver=file,filename={image},node-name=file{index}",
                 "--blockdev", f"driver=qcow2,file=file{index},node-name=disk{index}",
                 "--export", f"type=nbd,id=export{index},node-name=disk{index},writable=on"]
    return QemuProcess(argv, qmp, images)


def _held_files(socket_path: str) -> set[str]:
    with QMPSession(socket_path) as session:
        return {n["file"] for n in session.execute("query-named-block-nodes", {"flat": True})
                if n.get("drv") == "qcow2"}


def test_live_external_snapshots_by_a_qemu_of_another_user(folder, vm_user):
    """QEMU running as the VM's user cannot create files in snaptree's own
    folder: snaptree makes the overlays (the image's owner's) and QEMU
    opens them; internal snapshots then land in them, and a delete merges
    one back with block-commit."""
    disks = make_images(folder, 2)
    for disk in disks:
        os.chown(disk, vm_user.pw_uid, vm_user.pw_gid)
        os.chmod(disk, 0o600)
    daemon = _daemon_as(vm_user, folder, disks)
    try:
        assert peer_pid(daemon.qmp_socket) is not None
        with Snaptree(os.path.join(folder, "state")) as api:
            api.create_group("vm", [f"qcow2:{d}" for d in disks], qmp_socket=daemon.qmp_socket,
                             options={"qcow2.mode": "external"})
            api.create("vm", "e1")
            actives = [active_image(d) for d in disks]
            assert all(a != d for a, d in zip(actives, disks))
            assert set(actives) <= _held_files(daemon.qmp_socket)  # QEMU runs on them now
            for active in actives:
                found = os.stat(active)
                assert (found.st_uid, found.st_gid) == (vm_user.pw_uid, vm_user.pw_gid)
                assert stat.S_IMODE(found.st_mode) == 0o600
            i2 = api.create("vm", "i2", options={"mode": "internal"})
            assert all(i2.snapshot_id in snapshot_names(a) for a in actives)  # in QEMU's top images
            api.delete("vm", "i2")
            api.delete("vm", "e1")  # block-commit of the active overlay into the disk
            assert [active_image(d) for d in disks] == disks
            assert set(disks) <= _held_files(daemon.qmp_socket)
            assert api.check("vm").clean
    finally:
        daemon.quit()


def test_a_crash_after_making_overlays_for_another_users_qemu(folder, vm_user):
    """Killed between making the overlays and the transaction: recover
    takes the create back and removes the overlays QEMU never opened."""
    disks = make_images(folder, 2)
    for disk in disks:
        os.chown(disk, vm_user.pw_uid, vm_user.pw_gid)
    daemon = _daemon_as(vm_user, folder, disks)
    state = os.path.join(folder, "state")
    try:
        with Snaptree(state) as api:
            api.create_group("vm", [f"qcow2:{d}" for d in disks], qmp_socket=daemon.qmp_socket,
                             options={"qcow2.mode": "external"})
        killed = subprocess.run([sys.executable, "-m", "snaptree", "--state-dir", state,
                                 "create", "vm", "e1"], capture_output=True, text=True,
                                env={**os.environ, "SNAPTREE_KILL_AT_LABEL": "qcow2:overlays-made"})
        assert killed.returncode == -9, killed.stderr
        made = [n for d in disks for n in os.listdir(snapshot_dir(d)) if n.endswith(".qcow2")]
        assert len(made) == 2  # the crash came after both were made
        with Snaptree(state, auto_recover=False) as api:
            report = api.recover("vm")
            assert not report.errors, report
            assert [s.name for s in api.list("vm")] == []
            assert [n for d in disks for n in os.listdir(snapshot_dir(d))
                    if n.endswith(".qcow2")] == []
            assert api.check("vm").clean
            assert set(disks) <= _held_files(daemon.qmp_socket)
            api.create("vm", "e1")
            assert all(active_image(d) != d for d in disks)
    finally:
        daemon.quit()


def test_a_refused_transaction_removes_the_overlays_made_for_it(folder, vm_user):
    disks = make_images(folder, 2)
    for disk in disks:
        os.chown(disk, vm_user.pw_uid, vm_user.pw_gid)
    daemon = _daemon_as(vm_user, folder, disks)
    try:
        with Snaptree(os.path.join(folder, "state")) as api:
            api.create_group("vm", [f"qcow2:{d}" for d in disks], qmp_socket=daemon.qmp_socket,
                             options={"qcow2.mode": "external"})
            fail_on_command("transaction", QMPFailed("qcow2: QEMU refused transaction: injected",
                                                     command="transaction",
                                                     error_class="GenericError"))
            try:
                with pytest.raises(QMPFailed, match="injected"):
                    api.create("vm", "e1")
            finally:
                fail_on_command("transaction")
            assert [n for d in disks for n in os.listdir(snapshot_dir(d))
                    if n.endswith(".qcow2")] == []
            assert api.list("vm") == [] and api.check("vm").clean
    finally:
        daemon.quit()
