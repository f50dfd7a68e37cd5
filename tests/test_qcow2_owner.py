"""Images snaptree makes for a VM that runs as another user stay usable by that user."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest

from qemu_fixtures import make_images
from snaptree import Snaptree
from snaptree.errors import BackendError
from snaptree_qcow2 import active_image
from snaptree_qcow2.layout import snapshot_dir

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
    [disk] = make_images(folder, 1)
    os.chown(disk, vm_user.pw_uid, vm_user.pw_gid)
    os.chmod(disk, 0o600)
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
