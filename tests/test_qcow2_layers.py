"""Internal snapshots taken while an external overlay was active, then frozen by a later external one."""

from __future__ import annotations

import os
import subprocess

import pytest

from qemu_fixtures import image_digest, make_images, start_vm, write_pattern
from snaptree import Snaptree
from snaptree.errors import NotFound, NotSupported
from snaptree_qcow2 import active_image, qmp
from snaptree_qcow2.layout import overlay_path, snapshot_dir

pytestmark = pytest.mark.qemu


@pytest.fixture
def api(tmp_path):
    with Snaptree(str(tmp_path / "state"), auto_recover=True) as snaptree:
        yield snaptree


def _layered(api, tmp_path):
    """raw + qcow2 group: ext1 (external), int2 (internal, inside ext1's overlay), ext3
    (external, freezing that overlay); returns (disk, raw, {name: (qcow2 digest, raw bytes)})."""
    [disk] = make_images(str(tmp_path), 1)
    raw = tmp_path / "data.img"
    raw.write_bytes(b"\0" * 65536)
    api.create_group("vm", [f"raw:{raw}", f"qcow2:{disk}"])
    states = {}
    for seed, (name, mode) in enumerate([("ext1", "external"), ("int2", "internal"),
                                         ("ext3", "external")]):
        write_pattern(active_image(disk), seed + 1)
        raw.write_bytes(bytes([seed + 1]) * 65536)
        states[name] = (image_digest(active_image(disk), str(tmp_path)), raw.read_bytes())
        api.create("vm", name, options={"mode": mode})
    write_pattern(active_image(disk), 9)
    raw.write_bytes(b"\x09" * 65536)
    return disk, raw, states


def test_revert_to_internal_snapshot_below_a_later_external_one(api, tmp_path):
    disk, raw, states = _layered(api, tmp_path)
    frozen = active_image(disk)
    assert frozen == overlay_path(disk, api.info("vm", "ext3").snapshot_id)
    api.revert("vm", "int2")
    assert (image_digest(active_image(disk), str(tmp_path)), raw.read_bytes()) == states["int2"]
    # the image holding the tag is ext3's content: it must not have moved
    write_pattern(active_image(disk), 11)
    for name in ["ext3", "int2", "ext1", "int2", "ext3"]:
        api.revert("vm", name)
        assert (image_digest(active_image(disk), str(tmp_path)), raw.read_bytes()) == states[name]
    report = api.check("vm")
    assert report.clean and not report.orphans and not report.foreign
    for name in ["int2", "ext3", "ext1"]:
        api.delete("vm", name)
    assert api.list("vm") == []


def test_revert_refused_up_front_when_the_tag_is_gone(api, tmp_path):
    disk, raw, _ = _layered(api, tmp_path)
    sid = api.info("vm", "int2").snapshot_id
    holder = overlay_path(disk, api.info("vm", "ext1").snapshot_id)
    subprocess.run(["qemu-img", "snapshot", "-d", sid, holder], check=True)
    before = (active_image(disk), image_digest(active_image(disk), str(tmp_path)))
    with pytest.raises(NotFound, match=sid):
        api.revert("vm", "int2")
    assert raw.read_bytes() == b"\x09" * 65536                 # the raw disk came first
    assert (active_image(disk), image_digest(active_image(disk), str(tmp_path))) == before
    assert not [n for n in os.listdir(snapshot_dir(disk)) if n.startswith("run-")]


def test_memory_below_a_later_external_snapshot_refused_up_front(tmp_path, processes):
    [disk] = make_images(str(tmp_path), 1)
    vm = start_vm(str(tmp_path), [disk])
    processes.append(vm)
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("vm", [f"qcow2:{disk}"], qmp_socket=vm.qmp_socket)
        api.create("vm", "ext1", options={"mode": "external"})
        api.create("vm", "int2", memory=True, options={"mode": "internal"})
        api.create("vm", "ext3", options={"mode": "external"})
        before = active_image(disk)
        with pytest.raises(NotSupported, match="--disks-only"):
            api.revert("vm", "int2")
        assert active_image(disk) == before
        with qmp.QMPSession(vm.qmp_socket) as session:
            assert session.execute("query-status")["status"] == "running"
        assert [e["operation"] for e in api.journal("vm")].count("revert") == 0
