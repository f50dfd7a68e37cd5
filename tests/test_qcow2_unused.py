"""run-* images nothing needs: removed by the delete that frees them, reported by check."""

from __future__ import annotations

import os
import subprocess

import pytest

from qemu_fixtures import image_digest, make_images, qemu_io
from snaptree import Snaptree
from snaptree_qcow2 import active_image
from snaptree_qcow2.layout import snapshot_dir

pytestmark = pytest.mark.qemu


@pytest.fixture
def api(tmp_path):
    with Snaptree(str(tmp_path / "state"), auto_recover=True) as snaptree:
        yield snaptree


def _images(disk):
    folder = snapshot_dir(disk)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".qcow2"))


def test_deletes_leave_no_unused_run_image(api, tmp_path):
    [disk] = make_images(str(tmp_path), 1, size="64M")
    api.create_group("vm", [f"qcow2:{disk}"], options={"qcow2.mode": "external"})
    api.create("vm", "e1")
    qemu_io(active_image(disk), "write -P 7 0 32M")
    api.create("vm", "e2")
    api.revert("vm", "e1")
    now = image_digest(active_image(disk), str(tmp_path))
    api.delete("vm", "e1")
    api.delete("vm", "e2")
    assert api.list("vm") == []
    assert _images(disk) == [active_image(disk)]      # the 32M of e2's branch went with it
    assert image_digest(active_image(disk), str(tmp_path)) == now
    report = api.check("vm")
    assert report.clean and not report.foreign


def test_check_reports_a_run_image_nothing_uses(api, tmp_path):
    [disk] = make_images(str(tmp_path), 1)
    api.create_group("vm", [f"qcow2:{disk}"], options={"qcow2.mode": "external"})
    api.create("vm", "e1")
    stray = os.path.join(snapshot_dir(disk), "run-0badf00d.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", disk, "-F", "qcow2", stray],
                   check=True)
    assert [f["ref"] for f in api.check("vm").foreign] == [stray]
