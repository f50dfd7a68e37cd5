"""qcow2 backend through a running QEMU: transactions, jobs, memory, crashes."""

from __future__ import annotations

import os
import subprocess

import pytest

from qemu_fixtures import make_images, qemu_io, start_daemon, start_vm
from snaptree import Snaptree
from snaptree.errors import BackendError, NotSupported, QMPFailed
from snaptree_qcow2 import active_image, qmp
from snaptree_qcow2.layout import overlay_path, snapshot_dir

pytestmark = [pytest.mark.qemu]


@pytest.fixture
def api(tmp_path):
    with Snaptree(str(tmp_path / "state")) as snaptree:
        yield snaptree


def _tags(image: str) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", image],
                         capture_output=True, text=True, check=True).stdout
    import json
    return [s["name"] for s in json.loads(out).get("snapshots", [])]


def _nbd_write(daemon, index: int, pattern: int, offset: int = 0) -> None:
    subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern} {offset} 64k",
                    f"nbd+unix:///disk{index}?socket={daemon.nbd_socket}"],
                   check=True, capture_output=True)


def _hmp_write(vm, index: int, pattern: int, node: str | None = None) -> None:
    with qmp.QMPSession(vm.qmp_socket) as session:
        # share-rw=on on the device lets HMP's qemu-io write beside the guest
        out = session.execute("human-monitor-command",
                              {"command-line": f'qemu-io {node or f"disk{index}"} "write -P {pattern} 0 64k"'})
    assert "rror" not in out and "read-only" not in out, out


def _status(vm) -> str:
    with qmp.QMPSession(vm.qmp_socket) as session:
        return session.execute("query-status")["status"]


@pytest.mark.parametrize("count", [1, 4, 16])
def test_internal_transaction_on_daemon(api, tmp_path, processes, count):
    images = make_images(str(tmp_path), count)
    daemon = start_daemon(str(tmp_path), images)
    processes.append(daemon)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=daemon.qmp_socket)
    snap = api.create("vm", "s1")
    assert all(_tags(p) == [snap.snapshot_id] for p in images)
    with pytest.raises(NotSupported, match="no VM memory"):
        api.revert("vm", "s1")
    api.delete("vm", "s1")
    assert all(_tags(p) == [] for p in images)


def test_transaction_is_all_or_none(api, tmp_path, processes, monkeypatch):
    images = make_images(str(tmp_path), 4)
    daemon = start_daemon(str(tmp_path), images)
    processes.append(daemon)
    fixed = "0123456789abcdef"
    monkeypatch.setattr("snaptree.coordinator.new_snapshot_id", lambda *_: fixed)
    with qmp.QMPSession(daemon.qmp_socket) as session:  # the last disk has the tag already
        session.execute("blockdev-snapshot-internal-sync", {"device": "disk3", "name": fixed})
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=daemon.qmp_socket)
    with pytest.raises(QMPFailed) as caught:
        api.create("vm", "s1")
    assert caught.value.error_class == "GenericError"
    assert [_tags(p) for p in images[:3]] == [[], [], []]
    assert api.list("vm") == []


@pytest.mark.parametrize("count", [1, 4])
def test_external_live_create_and_commit(api, tmp_path, processes, count):
    images = make_images(str(tmp_path), count)
    daemon = start_daemon(str(tmp_path), images)
    processes.append(daemon)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=daemon.qmp_socket,
                     options={"qcow2.mode": "external"})
    for index in range(count):
        _nbd_write(daemon, index, 0x11)
    s1 = api.create("vm", "s1")
    for index in range(count):
        _nbd_write(daemon, index, 0x22, 65536)
    s2 = api.create("vm", "s2")
    assert all(active_image(p) == overlay_path(p, s2.snapshot_id) for p in images)
    for index in range(count):
        _nbd_write(daemon, index, 0x33, 131072)
    # internal snapshots now land in the new top node
    api.create("vm", "inner", options={"mode": "internal"})
    assert all(_tags(overlay_path(p, s2.snapshot_id)) for p in images)
    api.delete("vm", "inner")
    progress = []
    api.coordinator.progress = lambda *a: progress.append(a)
    api.delete("vm", "s1")          # intermediate commit
    api.delete("vm", "s2")          # active commit, pivots back to the image
    assert any("merge" in str(p[-1]) for p in progress)
    assert all(active_image(p) == p for p in images)
    assert all(not os.path.exists(overlay_path(p, s1.snapshot_id)) for p in images)
    daemon.quit()
    for image in images:
        qemu_io(image, "read -P 0x11 0 64k")
        qemu_io(image, "read -P 0x22 64k 64k")
        qemu_io(image, "read -P 0x33 128k 64k")


def test_external_revert_refused_while_running_then_offline(api, tmp_path, processes):
    images = make_images(str(tmp_path), 2)
    daemon = start_daemon(str(tmp_path), images)
    processes.append(daemon)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=daemon.qmp_socket,
                     options={"qcow2.mode": "external"})
    _nbd_write(daemon, 0, 0x44)
    api.create("vm", "s1")
    _nbd_write(daemon, 0, 0x55)
    with pytest.raises(NotSupported, match="qemu.launch=FILE.*shut QEMU down"):
        api.revert("vm", "s1")
    daemon.quit()                   # socket gone: the same group now works offline
    api.revert("vm", "s1")
    qemu_io(active_image(images[0]), "read -P 0x44 0 64k")


@pytest.mark.parametrize("count", [1, 4])
def test_memory_internal_save_and_load(api, tmp_path, processes, count):
    images = make_images(str(tmp_path), count)
    vm = start_vm(str(tmp_path), images)
    processes.append(vm)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=vm.qmp_socket)
    for index in range(count):
        _hmp_write(vm, index, 0x61)
    snap = api.create("vm", "with-ram", memory=True)
    assert snap.memory is not None and snap.memory.kind == "internal"
    assert _status(vm) == "running"
    for index in range(count):
        _hmp_write(vm, index, 0x62)
    api.revert("vm", "with-ram")
    assert _status(vm) == "running"
    vm.quit()
    for image in images:
        qemu_io(image, "read -P 0x61 0 64k")
    info = subprocess.run(["qemu-img", "snapshot", "-l", images[0]], capture_output=True,
                          text=True, check=True).stdout
    assert snap.snapshot_id in info


def test_memory_file_for_external(api, tmp_path, processes):
    images = make_images(str(tmp_path), 2)
    vm = start_vm(str(tmp_path), images)
    processes.append(vm)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=vm.qmp_socket,
                     options={"qcow2.mode": "external"})
    with qmp.QMPSession(vm.qmp_socket) as session:
        session.execute("migrate-set-parameters", {"max-bandwidth": 12345678})
    snap = api.create("vm", "ram", memory=True)
    assert snap.memory.kind == "file"
    assert os.path.getsize(snap.memory.ref) > 100_000
    with qmp.QMPSession(vm.qmp_socket) as session:  # unthrottled for the save only
        assert session.execute("query-migrate-parameters")["max-bandwidth"] == 12345678
    assert _status(vm) == "running"
    # the disks are active again after migration; writes go to the new top node
    _hmp_write(vm, 0, 0x71, node=f"st{snap.snapshot_id}n0")
    with pytest.raises(NotSupported, match="-incoming"):
        api.revert("vm", "ram")
    api.delete("vm", "ram")
    assert not os.path.exists(snap.memory.ref)
    assert all(active_image(p) == p for p in images)


def test_failed_disk_snapshot_resumes_vm(api, tmp_path, processes):
    images = make_images(str(tmp_path), 2)
    vm = start_vm(str(tmp_path), images)
    processes.append(vm)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=vm.qmp_socket,
                     options={"qcow2.mode": "external"})
    qmp.fail_on_command("transaction", BackendError("injected: transaction refused"))
    try:
        with pytest.raises(BackendError, match="injected"):
            api.create("vm", "ram", memory=True)
    finally:
        qmp.fail_on_command("transaction", None)
    assert _status(vm) == "running"
    assert api.list("vm") == []
    assert [n for n in os.listdir(snapshot_dir(images[0])) if n != "active"] == []


def test_qemu_killed_during_commit_then_recover(api, tmp_path, processes, monkeypatch):
    images = make_images(str(tmp_path), 2)
    daemon = start_daemon(str(tmp_path), images)
    processes.append(daemon)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=daemon.qmp_socket,
                     options={"qcow2.mode": "external"})
    _nbd_write(daemon, 0, 0x31)
    api.create("vm", "s1")
    _nbd_write(daemon, 0, 0x32, 65536)
    real_run_job = qmp.QMPSession.run_job

    def killing_run_job(self, command, *args, **kwargs):
        daemon.kill()               # QEMU dies as the merge starts
        return real_run_job(self, command, *args, **kwargs)

    monkeypatch.setattr(qmp.QMPSession, "run_job", killing_run_job)
    with pytest.raises(BackendError, match="lost QEMU|QEMU"):
        api.delete("vm", "s1")
    monkeypatch.setattr(qmp.QMPSession, "run_job", real_run_job)
    report = api.recover("vm")      # QEMU is gone: the merge is finished with qemu-img
    assert report.errors == []
    assert api.list("vm") == []
    assert api.check("vm").clean
    assert all(active_image(p) == p for p in images)
    qemu_io(images[0], "read -P 0x31 0 64k")
    qemu_io(images[0], "read -P 0x32 64k 64k")


@pytest.mark.parametrize("mode", ["internal", "external"])
def test_create_with_memory_holds_one_qmp_connection(api, tmp_path, processes, monkeypatch, mode):
    images = make_images(str(tmp_path), 2)
    vm = start_vm(str(tmp_path), images)
    processes.append(vm)
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=vm.qmp_socket,
                     options={"qcow2.mode": mode})
    opened = []
    enter = qmp.QMPSession.__enter__

    def counting_enter(session):
        opened.append(session.socket_path)
        return enter(session)

    monkeypatch.setattr(qmp.QMPSession, "__enter__", counting_enter)
    api.create("vm", "ram", memory=True)
    api.create("vm", "disks")
    # pause, save, snapshot and resume share one connection per create
    assert opened == [vm.qmp_socket, vm.qmp_socket]
    monkeypatch.setattr(qmp.QMPSession, "__enter__", enter)
    assert _status(vm) == "running"  # closed: QEMU answers the next client


@pytest.mark.parametrize("mode", ["internal", "external"])
@pytest.mark.parametrize("running", [True, False], ids=["live", "offline"])
def test_delete_reads_each_disk_chain_once_per_step(api, tmp_path, processes, monkeypatch,
                                                    mode, running):
    from snaptree_qcow2.offline import Chain

    images = make_images(str(tmp_path), 3)
    socket_path = None
    if running:
        daemon = start_daemon(str(tmp_path), images)
        processes.append(daemon)
        socket_path = daemon.qmp_socket
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=socket_path,
                     options={"qcow2.mode": mode})
    snap = api.create("vm", "s1")
    reads = []
    read_chain = Chain.__init__

    def counting_read(chain, qemu_img, image):
        reads.append(image)
        read_chain(chain, qemu_img, image)  # the real read: headers or qemu-img

    monkeypatch.setattr(Chain, "__init__", counting_read)
    api.delete("vm", "s1")
    monkeypatch.setattr(Chain, "__init__", read_chain)
    # once for the prepare's checks, once for the delete; an external delete
    # reads it once more after the merge changed it, for run-* images left unused
    expected = 2 if mode == "internal" else 3
    assert {p: reads.count(p) for p in images} == {p: expected for p in images}, reads
    assert sorted(set(reads)) == sorted(images)
    assert api.list("vm") == []
    assert all(_tags(p) == [] and active_image(p) == p for p in images)
    assert all(not os.path.exists(overlay_path(p, snap.snapshot_id)) for p in images)


def test_socket_file_nobody_listens_on_means_offline(api, tmp_path):
    import socket
    images = make_images(str(tmp_path), 2)
    stale = str(tmp_path / "gone.qmp")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(stale)
    listener.close()  # the file stays, as after a QEMU that was killed
    api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=stale)
    snap = api.create("vm", "s1")  # qemu-img, offline
    assert all(_tags(p) == [snap.snapshot_id] for p in images)
    api.delete("vm", "s1")
    assert all(_tags(p) == [] for p in images)


def test_active_commit_completes_once_though_ready_comes_twice(api, tmp_path, processes,
                                                              monkeypatch):
    """A job paused while ready (a drain, a VM stopped and resumed) reports
    "ready" again; the second report can arrive after the job completed.
    Injected here: the first "ready" event delivered twice."""
    from qemu.qmp import EventListener

    images = make_images(str(tmp_path), 1)
    daemon = start_daemon(str(tmp_path), images)
    processes.append(daemon)
    api.create_group("vm", [f"qcow2:{images[0]}"], qmp_socket=daemon.qmp_socket,
                     options={"qcow2.mode": "external"})
    _nbd_write(daemon, 0, 0x11)
    api.create("vm", "s1")
    _nbd_write(daemon, 0, 0x22)
    real_get = EventListener.get
    repeated = []

    async def get_twice(self):
        event = await real_get(self)
        if event["data"].get("status") == "ready" and not repeated:
            repeated.append(event)
            await self.put(event)  # the same report again, behind the first
        return event

    monkeypatch.setattr(EventListener, "get", get_twice)
    api.delete("vm", "s1")  # active commit: job-complete on "ready"
    assert repeated and active_image(images[0]) == images[0]
    daemon.quit()
    qemu_io(images[0], "read -P 0x22 0 64k")
