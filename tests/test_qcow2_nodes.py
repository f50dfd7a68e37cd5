"""How the live qcow2 path finds block nodes: query-block first, remembered
nodes checked in the images afterwards, stale ones noticed and replaced."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time

import pytest

from qemu_fixtures import make_images, start_daemon, start_vm
from snaptree import Snaptree
from snaptree_qcow2 import live, qmp
from snaptree_qcow2.header import read_header, snapshot_names

pytestmark = [pytest.mark.qemu]


def _qemu_img_info(image: str) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", image],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _qemu_img_tags(image: str) -> list[str]:
    return [s["name"] for s in _qemu_img_info(image).get("snapshots", [])]


@pytest.fixture
def api(tmp_path):
    live.forget_nodes()
    with Snaptree(str(tmp_path / "state")) as snaptree:
        yield snaptree
    live.forget_nodes()


@pytest.fixture
def commands(monkeypatch):
    """Every QMP command name sent, in order."""
    sent: list[str] = []
    execute = qmp.QMPSession.execute

    def recording(self, command, arguments=None, **kwargs):
        sent.append(command)
        return execute(self, command, arguments, **kwargs)
    monkeypatch.setattr(qmp.QMPSession, "execute", recording)
    return sent


def test_header_names_match_qemu_img(tmp_path):
    image = make_images(str(tmp_path), 1)[0]
    names = ["a", "bb", "0123456789abcdef", "x" * 200, "é-ü"] + [f"n{i}" for i in range(60)]
    for name in names:
        subprocess.run(["qemu-img", "snapshot", "-c", name, image], check=True)
    subprocess.run(["qemu-img", "snapshot", "-d", "bb", image], check=True)
    assert snapshot_names(image) == _qemu_img_tags(image)
    assert "bb" not in snapshot_names(image) and "x" * 200 in snapshot_names(image)


def test_header_backing_and_vm_state_match_qemu_img(tmp_path):
    """read_header gives what Chain used to ask qemu-img for: the backing file
    as written (relative or absolute) and each snapshot's saved VM state size."""
    [base] = make_images(str(tmp_path), 1)
    subprocess.run(["qemu-img", "snapshot", "-c", "plain", base], check=True)
    relative = tmp_path / "rel.qcow2"
    absolute = tmp_path / "abs.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    os.path.basename(base), str(relative)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base,
                    str(absolute)], check=True)
    for path in (base, str(relative), str(absolute)):
        info = _qemu_img_info(path)
        header = read_header(path)
        assert header is not None
        assert header.backing == info.get("backing-filename")
        assert [(s["name"], s["vm-state-size"]) for s in header.snapshots] == [
            (s["name"], s["vm-state-size"]) for s in info.get("snapshots", [])]
    assert read_header(str(relative)).backing == os.path.basename(base)


def test_header_reads_the_vm_state_size_a_memory_snapshot_saved(tmp_path):
    images = make_images(str(tmp_path), 1)
    vm = start_vm(str(tmp_path), images)
    try:
        with qmp.QMPSession(vm.qmp_socket) as session:
            session.run_job("snapshot-save", {"job-id": "save", "tag": "withram", "vmstate": "disk0",
                                              "devices": ["disk0"]}, "save")
    finally:
        vm.kill()
    [saved] = _qemu_img_info(images[0])["snapshots"]
    assert saved["vm-state-size"] > 0
    assert read_header(images[0]).snapshots == [{"name": "withram",
                                                  "vm-state-size": saved["vm-state-size"]}]


def test_header_refuses_what_is_not_qcow2(tmp_path):
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    image = make_images(str(tmp_path), 1)[0]
    subprocess.run(["qemu-img", "snapshot", "-c", "tag", image], check=True)
    with open(image, "rb") as handle:
        head = handle.read(72)
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(head)  # the header points at a table that is not there
    assert snapshot_names(str(raw)) is None
    assert snapshot_names(str(cut)) is None
    assert snapshot_names(str(tmp_path / "missing.qcow2")) is None


def test_vm_devices_are_enough(api, tmp_path, commands):
    images = make_images(str(tmp_path), 2)
    vm = start_vm(str(tmp_path), images)
    try:
        api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=vm.qmp_socket)
        first = api.create("vm", "a")
        assert "query-block" in commands and "query-named-block-nodes" not in commands
        del commands[:]
        second = api.create("vm", "b")
        assert commands == ["transaction"]  # remembered nodes, checked in the images
        for image in images:
            tags = snapshot_names(image)
            assert first.snapshot_id in tags and second.snapshot_id in tags
    finally:
        vm.kill()


def _rename(daemon, images: list[str], moves: dict[str, tuple[str, str]]) -> None:
    """Drop every export and node, then open ``moves[node] = (image, file_node)``."""
    with qmp.QMPSession(daemon.qmp_socket) as session:
        for index in range(len(images)):
            session.execute("block-export-del", {"id": f"export{index}"})
        for index in range(len(images)):
            session.execute("blockdev-del", {"node-name": f"disk{index}"})
            session.execute("blockdev-del", {"node-name": f"file{index}"})
        for node, (image, file_node) in moves.items():
            session.execute("blockdev-add", {"driver": "file", "filename": image,
                                             "node-name": file_node})
            session.execute("blockdev-add", {"driver": "qcow2", "file": file_node,
                                             "node-name": node})


def test_node_name_moved_to_another_image(api, tmp_path, commands):
    images = make_images(str(tmp_path), 2)
    daemon = start_daemon(str(tmp_path), images)
    try:
        api.create_group("g", [f"qcow2:{images[0]}"], qmp_socket=daemon.qmp_socket)
        api.create("g", "before")  # remembers disk0 for images[0]
        # disk0 now names the image outside the group; the group's image is "moved"
        _rename(daemon, images, {"disk0": (images[1], "fileb"), "moved": (images[0], "filea")})
        del commands[:]
        snap = api.create("g", "after")
        # the first transaction went to the wrong image and was taken back
        assert commands.count("transaction") == 2
        assert "blockdev-snapshot-delete-internal-sync" in commands
        assert snap.snapshot_id in snapshot_names(images[0])
        assert snapshot_names(images[1]) == []
        assert api.check("g").clean
    finally:
        daemon.kill()


def test_remembered_node_gone(api, tmp_path, commands):
    images = make_images(str(tmp_path), 1)
    daemon = start_daemon(str(tmp_path), images)
    try:
        api.create_group("g", [f"qcow2:{images[0]}"], qmp_socket=daemon.qmp_socket)
        api.create("g", "before")
        _rename(daemon, images, {"renamed": (images[0], "filea")})
        del commands[:]
        snap = api.create("g", "after")
        # QEMU refused the whole first transaction: nothing to take back
        assert commands.count("transaction") == 2
        assert "blockdev-snapshot-delete-internal-sync" not in commands
        assert snap.snapshot_id in snapshot_names(images[0])
        api.delete("g", "after")
        assert snap.snapshot_id not in snapshot_names(images[0])
    finally:
        daemon.kill()


def test_restarted_qemu_is_asked_again(api, tmp_path, commands):
    images = make_images(str(tmp_path), 1)
    daemon = start_daemon(str(tmp_path), images)
    try:
        api.create_group("g", [f"qcow2:{images[0]}"], qmp_socket=daemon.qmp_socket)
        api.create("g", "a")
    finally:
        daemon.quit()  # it removes its sockets
    daemon = start_daemon(str(tmp_path), images)  # same socket path, another process
    try:
        del commands[:]
        api.create("g", "b")
        assert commands.count("transaction") == 1
        assert commands[0] in ("query-block", "query-named-block-nodes")
    finally:
        daemon.kill()


def test_images_the_transaction_wrote_are_not_read_back(api, tmp_path, commands, monkeypatch):
    """The check after a snapshot into remembered nodes reads only images
    whose times and size the transaction left as they were."""
    images = make_images(str(tmp_path), 4)
    daemon = start_daemon(str(tmp_path), images)
    read: list[str] = []

    def counted(path):
        read.append(path)
        return snapshot_names(path)

    try:
        api.create_group("g", [f"qcow2:{p}" for p in images], qmp_socket=daemon.qmp_socket)
        api.create("g", "first")  # finds and remembers the nodes
        monkeypatch.setattr(live, "snapshot_names", counted)
        time.sleep(0.05)  # past the coarse clock tick of the last write
        snap = api.create("g", "second")
        assert read == []
        assert all(snap.snapshot_id in snapshot_names(p) for p in images)
        # an image whose stamp cannot change (the same times put back) is read
        stamp = os.stat(images[2])
        real_stamp = live._stamp
        monkeypatch.setattr(live, "_stamp", lambda p: (
            (stamp.st_mtime_ns, stamp.st_ctime_ns, stamp.st_size) if p == images[2] else real_stamp(p)))
        api.create("g", "third")
        assert read == [images[2]]
        assert api.check("g").clean
    finally:
        daemon.kill()


def test_header_beyond_qemus_table_limits_is_refused(tmp_path):
    """More entries than QEMU allows, or an entry larger than its table limit,
    means a damaged header: None (the caller asks qemu-img), not a long read."""
    [image] = make_images(str(tmp_path), 1)
    subprocess.run(["qemu-img", "snapshot", "-c", "tag", image], check=True)
    with open(image, "rb") as handle:
        data = bytearray(handle.read())
    table = struct.unpack_from(">Q", data, 64)[0]
    many = tmp_path / "many.qcow2"
    data[60:64] = (70000).to_bytes(4, "big")  # nb_snapshots: zeros after the table parse as entries
    many.write_bytes(bytes(data))
    os.truncate(many, 16 * 1024 * 1024)
    assert read_header(str(many)) is None
    huge = tmp_path / "huge.qcow2"
    data[60:64] = (1).to_bytes(4, "big")
    struct.pack_into(">I", data, table + 36, 0xFFFFFFF0)  # the entry's extra_data_size
    huge.write_bytes(bytes(data))
    assert read_header(str(huge)) is None
    assert read_header(image).snapshots[0]["name"] == "tag"
