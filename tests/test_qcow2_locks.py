"""qcow2 images another process holds: refused before anything changes, with advice that works."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from qemu_fixtures import image_digest, make_images, write_pattern
from snaptree import Snaptree
from snaptree.errors import CommandFailed, NotFound, VolumeInUse
from snaptree_qcow2 import active_image
from snaptree_qcow2.header import snapshot_names
from snaptree_qcow2.layout import overlay_path
from snaptree_qcow2.qemuimg import QemuImg

pytestmark = pytest.mark.qemu


@pytest.fixture
def api(tmp_path):
    with Snaptree(str(tmp_path / "state"), auto_recover=True) as snaptree:
        yield snaptree


@pytest.fixture
def hold():
    """``hold(image)``: a qemu-io process keeps ``image`` open for writing until the test ends."""
    holders: list[subprocess.Popen] = []

    def start(image: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            # sleep is in milliseconds; qemu-io exits at once if our probe held the lock
            proc = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 1000000", image],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            holders.append(proc)
            while proc.poll() is None:
                if subprocess.run(["qemu-img", "snapshot", "-l", image],
                                  capture_output=True).returncode != 0:
                    # both may have failed on each other's lock: qemu-io has it
                    # only if it still runs a moment later
                    time.sleep(0.3)
                    if proc.poll() is None:
                        return
                time.sleep(0.02)
            assert time.monotonic() < deadline, "qemu-io did not take the image lock"

    yield start
    for proc in holders:
        proc.kill()
        proc.wait()


def test_in_use_advice_names_the_real_option(tmp_path, hold):
    [disk] = make_images(str(tmp_path), 1)
    env = dict(os.environ, SNAPTREE_STATE_DIR=str(tmp_path / "state"))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snaptree", *args], env=env,
                              capture_output=True, text=True)

    assert cli("group", "create", "vm", f"qcow2:{disk}").returncode == 0
    hold(disk)
    result = cli("create", "vm", "s1")
    assert result.returncode == 6
    # the advice names an option the CLI has, on the command that takes it
    assert "group set GROUP --qmp SOCKET" in result.stderr
    assert "--qmp-socket" not in result.stderr
    assert "--qmp SOCKET" in cli("group", "set", "--help").stdout
    assert "--qmp SOCKET" in cli("group", "create", "--help").stdout
    assert len(result.stderr.strip().splitlines()) == 1


def _two_disks(api, tmp_path, mode):
    """Disks a and b with snapshot s1, both rewritten since; returns (disks, digests now)."""
    disks = make_images(str(tmp_path), 2)
    api.create_group("vm", [f"qcow2:{d}" for d in disks], options={"qcow2.mode": mode})
    for seed, disk in enumerate(disks):
        write_pattern(disk, seed + 1)
    api.create("vm", "s1")
    if mode == "external":
        api.revert("vm", "s1")  # off the overlay: each disk on a run-* image of its own
    for seed, disk in enumerate(disks):
        write_pattern(active_image(disk), seed + 5)
    return disks, _state(disks, tmp_path)


def _state(disks, tmp_path):
    return [(active_image(d), image_digest(active_image(d), str(tmp_path))) for d in disks]


@pytest.mark.parametrize("mode", ["internal", "external"])
def test_revert_refused_before_any_disk_when_one_is_held(api, tmp_path, hold, mode):
    disks, before = _two_disks(api, tmp_path, mode)
    hold(active_image(disks[1]))
    with pytest.raises(VolumeInUse, match="disk1"):
        api.revert("vm", "s1")
    assert _state(disks, tmp_path) == before


@pytest.mark.parametrize("mode", ["internal", "external"])
def test_revert_refused_before_any_disk_when_one_lost_its_snapshot(api, tmp_path, mode):
    disks, before = _two_disks(api, tmp_path, mode)
    sid = api.info("vm", "s1").snapshot_id
    if mode == "internal":
        subprocess.run(["qemu-img", "snapshot", "-d", sid, disks[1]], check=True)
    else:
        os.unlink(overlay_path(disks[1], sid))
    with pytest.raises(NotFound, match=sid if mode == "internal" else "disk1"):
        api.revert("vm", "s1")
    assert _state(disks, tmp_path) == before


def test_delete_refused_before_any_disk_when_one_is_held(api, tmp_path, hold):
    disks, _ = _two_disks(api, tmp_path, "internal")
    sid = api.info("vm", "s1").snapshot_id
    hold(disks[1])
    with pytest.raises(VolumeInUse, match="disk1"):
        api.delete("vm", "s1")
    assert all(sid in snapshot_names(d) for d in disks)
    assert [s.name for s in api.list("vm")] == ["s1"]


def test_failure_inside_the_batch_names_the_disks_already_reverted(api, tmp_path, monkeypatch):
    disks, _ = _two_disks(api, tmp_path, "internal")
    apply = QemuImg.snapshot_apply

    def fail_on_second_disk(self, image, tag):  # fault injection: qemu-img fails on disk1
        if image == disks[1]:
            raise CommandFailed("qcow2: qemu-img failed: injected", argv=["qemu-img"])
        apply(self, image, tag)

    monkeypatch.setattr(QemuImg, "snapshot_apply", fail_on_second_disk)
    with pytest.raises(CommandFailed, match=f"already reverted: {disks[0]}\\)"):
        api.revert("vm", "s1")
