"""qcow2 backend without a running QEMU: qemu-img, internal and external modes."""

from __future__ import annotations

import itertools
import os
import subprocess

import pytest

from qemu_fixtures import image_digest, make_images, start_daemon, write_pattern
from snaptree import Snaptree
from snaptree.errors import InvalidInput, VolumeInUse
from snaptree.testing import BackendContract, VolumeHandle
from snaptree_qcow2 import active_image
from snaptree_qcow2.layout import overlay_path

pytestmark = pytest.mark.qemu


def _handle(path: str, tmp_dir: str, mode: str) -> VolumeHandle:
    return VolumeHandle(
        spec=f"qcow2:{path}",
        fill=lambda seed: write_pattern(active_image(path), seed),
        digest=lambda: image_digest(active_image(path), tmp_dir),
        group_options={"qcow2.mode": mode})


class TestQcow2Contract(BackendContract):
    """The kit, once per mode: tags inside the image, and overlays."""

    @pytest.fixture(params=["internal", "external"])
    def make_volume(self, request, tmp_path):
        counter = itertools.count()

        def factory() -> VolumeHandle:
            folder = tmp_path / f"v{next(counter)}"
            folder.mkdir()
            [path] = make_images(str(folder), 1)
            return _handle(path, str(tmp_path), request.param)
        return factory


@pytest.fixture
def api(tmp_path):
    with Snaptree(str(tmp_path / "state"), auto_recover=True) as snaptree:
        yield snaptree


def test_external_tree_keeps_branches(api, tmp_path):
    [disk] = make_images(str(tmp_path), 1)
    api.create_group("vm", [f"qcow2:{disk}"], options={"qcow2.mode": "external"})
    digests = {}
    for seed, name in enumerate(["a", "b"]):
        write_pattern(active_image(disk), seed + 1)
        digests[name] = image_digest(active_image(disk), str(tmp_path))
        api.create("vm", name)
    api.revert("vm", "a")
    write_pattern(active_image(disk), 9)
    api.create("vm", "a2")                      # a second branch below "a"
    api.revert("vm", "b")
    assert image_digest(active_image(disk), str(tmp_path)) == digests["b"]
    api.delete("vm", "a")                       # base of two branches: renamed, data kept
    api.revert("vm", "b")
    assert image_digest(active_image(disk), str(tmp_path)) == digests["b"]
    api.delete("vm", "b")
    api.revert("vm", "a2")
    api.delete("vm", "a2")
    assert not api.check("vm").orphans
    assert api.list("vm") == []


def test_mode_is_validated(api, tmp_path):
    [disk] = make_images(str(tmp_path), 1)
    api.create_group("vm", [f"qcow2:{disk}"])
    with pytest.raises(InvalidInput, match="mode"):
        api.create("vm", "s", options={"mode": "sideways"})
    assert api.list("vm") == []


def test_raw_image_refused(api, tmp_path):
    path = tmp_path / "plain.img"
    path.write_bytes(b"\0" * 65536)
    with pytest.raises(InvalidInput, match="not qcow2"):
        api.create_group("vm", [f"qcow2:{path}"])


def test_foreign_internal_snapshot_is_listed(api, tmp_path):
    [disk] = make_images(str(tmp_path), 1)
    subprocess.run(["qemu-img", "snapshot", "-c", "made-by-hand", disk], check=True)
    api.create_group("vm", [f"qcow2:{disk}"])
    api.create("vm", "mine")
    report = api.check("vm")
    assert [f["ref"] for f in report.foreign] == ["made-by-hand"]
    assert report.clean


@pytest.mark.parametrize("mode", ["internal", "external"])
def test_image_held_by_qemu_needs_the_socket(api, tmp_path, mode):
    images = make_images(str(tmp_path), 1)
    daemon = start_daemon(str(tmp_path), images)
    try:
        api.create_group("vm", [f"qcow2:{images[0]}"], options={"qcow2.mode": mode})
        with pytest.raises(VolumeInUse, match="QMP socket"):
            api.create("vm", "s")
        assert api.list("vm") == []
        assert not os.path.exists(overlay_path(images[0], "0" * 16))
        assert active_image(images[0]) == images[0]
    finally:
        daemon.kill()


@pytest.mark.root
def test_a_batch_revert_failing_on_its_second_disk_stays_open_for_recover(capsys, tmp_path):
    """qcow2 reverts a group's disks in one call: the first disk back and the second refused
    is a half-reverted group, not 'nothing changed' (a create would then snapshot the mix)."""
    from cli_helpers import st

    first, second = make_images(str(tmp_path), 2)
    state = tmp_path / "state"
    assert st(capsys, state, "group", "create", "vm", f"qcow2:{first}", f"qcow2:{second}")[0] == 0
    for image in (first, second):
        write_pattern(image, 1)
    assert st(capsys, state, "create", "vm", "s1")[0] == 0
    at_s1 = [image_digest(image, str(tmp_path)) for image in (first, second)]
    for image in (first, second):
        write_pattern(image, 2)
    assert st(capsys, state, "create", "vm", "s2")[0] == 0
    subprocess.run(["chattr", "+i", second], check=True)
    try:
        code, _, err = st(capsys, state, "revert", "vm", "s1")
        assert code != 0 and "maybe reverted" in err and "snaptree recover vm" in err
        assert image_digest(first, str(tmp_path)) == at_s1[0]  # the first disk did go back
        assert st(capsys, state, "check", "vm")[0] == 11
        code, _, err = st(capsys, state, "create", "vm", "mixed")
        assert code == 8, err
    finally:
        subprocess.run(["chattr", "-i", second], check=True)
    assert st(capsys, state, "recover", "vm")[0] == 0
    assert [image_digest(image, str(tmp_path)) for image in (first, second)] == at_s1
    code, out, _ = st(capsys, state, "current", "vm")
    assert code == 0 and "s1" in out
    assert st(capsys, state, "check", "vm")[0] == 0
