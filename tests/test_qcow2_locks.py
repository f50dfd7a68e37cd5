"""qcow2 images another process holds: refused before anything changes, with advice that works."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from qemu_fixtures import image_digest, make_images, write_pattern
from snaptree import Snaptree
from snaptree.errors import VolumeInUse
from snaptree_qcow2 import active_image

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
                                  capture_output=True).returncode != 0 and proc.poll() is None:
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
    assert "group create" in result.stderr and "--qmp SOCKET" in result.stderr
    assert "--qmp-socket" not in result.stderr
    assert "--qmp SOCKET" in cli("group", "create", "--help").stdout
    assert len(result.stderr.strip().splitlines()) == 1
