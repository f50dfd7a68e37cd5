"""``group set``: a group follows its VM to a new QMP socket and keeps its snapshots."""

from __future__ import annotations

import json
import os

import pytest

from cli_helpers import st
from qemu_fixtures import make_images, qemu_io, start_daemon, write_pattern
from snaptree import Snaptree
from snaptree.errors import InvalidInput, VolumeInUse


@pytest.fixture
def group(tmp_path, capsys):
    disk = tmp_path / "d.img"
    disk.write_bytes(b"1" * 8192)
    state = tmp_path / "state"
    assert st(capsys, state, "group", "create", "vm", f"raw:{disk}", "-o", "keep=1")[0] == 0
    assert st(capsys, state, "create", "vm", "a")[0] == 0
    return state


def test_set_and_unset(capsys, group, tmp_path):
    sock = str(tmp_path / "qmp.sock")
    code, out, err = st(capsys, group, "group", "set", "vm", "--qmp", sock, "-o", "k=v", "--json")
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert shown["qmp_socket"] == sock and shown["options"] == {"keep": "1", "k": "v"}
    code, out, _ = st(capsys, group, "group", "set", "vm", "--no-qmp", "--unset", "keep")
    assert code == 0 and "qmp:      -" in out
    code, out, _ = st(capsys, group, "group", "show", "vm", "--json")
    shown = json.loads(out)
    assert shown["qmp_socket"] is None and shown["options"] == {"k": "v"}
    assert shown["current"] == "a" and shown["snapshots"] == 1  # the snapshots stay


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "nothing to change"),
    (["--qmp", "relative.sock"], 2, "must be absolute"),
    (["--unset", "missing"], 2, "has no option 'missing'"),
    (["-o", "keep=2", "--unset", "keep"], 2, "both set and unset"),
    (["-o", "novalue"], 2, "KEY=VALUE"),
])
def test_bad_input_changes_nothing(capsys, group, args, code, message):
    before = st(capsys, group, "group", "show", "vm", "--json")[1]
    got, out, err = st(capsys, group, "group", "set", "vm", *args)
    assert got == code and message in err and out == ""
    assert st(capsys, group, "group", "show", "vm", "--json")[1] == before


def test_socket_and_no_socket_together(capsys, group):
    with pytest.raises(SystemExit) as exited:
        st(capsys, group, "group", "set", "vm", "--qmp", "/a.sock", "--no-qmp")
    assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_unknown_group(capsys, group):
    code, _, err = st(capsys, group, "group", "set", "nope", "-o", "a=b")
    assert code == 3 and err.count("\n") == 1


def test_library_sees_the_change_at_once(tmp_path):
    """The catalog keeps group definitions: a change must not be hidden by that."""
    disk = tmp_path / "d.img"
    disk.write_bytes(b"1" * 4096)
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("vm", [f"raw:{disk}"])
        assert api.group("vm").qmp_socket is None
        api.set_group("vm", qmp_socket="/run/vm.qmp", options={"a": 1})
        assert api.group("vm").qmp_socket == "/run/vm.qmp" and dict(api.group("vm").options) == {"a": 1}
        api.set_group("vm", qmp_socket=None, unset=["a"])
        assert api.group("vm").qmp_socket is None and dict(api.group("vm").options) == {}
        with pytest.raises(InvalidInput):
            api.set_group("vm", options={"a": [1]})


@pytest.mark.qemu
def test_a_restarted_vm_on_a_new_socket(short_dir):
    """The VM came back with another monitor socket (Xen's qmp-libxl-<domid>):
    with the old one the disks look offline and in use; after ``group set``
    the create goes through the new QEMU, and an older snapshot reverts."""
    disks = make_images(short_dir, 2)
    for disk in disks:
        write_pattern(disk, 1)
    first = os.path.join(short_dir, "one")
    os.mkdir(first)
    daemon = start_daemon(first, disks)
    try:
        with Snaptree(os.path.join(short_dir, "state")) as api:
            api.create_group("vm", [f"qcow2:{d}" for d in disks], qmp_socket=daemon.qmp_socket)
            api.create("vm", "before")
            daemon.quit()
            second = os.path.join(short_dir, "two")
            os.mkdir(second)
            daemon = start_daemon(second, disks)
            with pytest.raises(VolumeInUse, match="group set GROUP --qmp SOCKET"):
                api.create("vm", "lost")  # the old socket is dead: qemu-img finds the lock
            api.set_group("vm", qmp_socket=daemon.qmp_socket)
            snap = api.create("vm", "after")
            assert snap.name == "after" and [s.name for s in api.list("vm")] == ["before", "after"]
            daemon.quit()  # the offline revert needs the images free
            for disk in disks:
                write_pattern(disk, 2)
            api.set_group("vm", qmp_socket=None)
            api.revert("vm", "before")
            for disk in disks:
                qemu_io(disk, f"read -P {1 % 251 + 1} 0 1M")
            assert api.group("vm").current == "before"
            assert api.check("vm").clean
    finally:
        daemon.kill()


def test_set_leaves_recovery_to_the_next_operation(tmp_path):
    """An interrupted operation is not recovered through the old socket:
    set changes the group, the next operation recovers through the new one."""
    import subprocess
    import sys
    disk = tmp_path / "d.img"
    disk.write_bytes(b"1" * 4096)
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{disk}"])
    killed = subprocess.run([sys.executable, "-m", "snaptree", "--state-dir", state, "create",
                             "vm", "lost"], capture_output=True, text=True,
                            env={**os.environ, "SNAPTREE_KILL_AT_LABEL": "backend:snapshot:raw:after"})
    assert killed.returncode == -9
    with Snaptree(state) as api:
        api.set_group("vm", qmp_socket="/run/new.qmp")
        assert api.warnings == [] and api.catalog.has_open_journal("vm")
        api.create("vm", "kept")
        assert any(w.startswith("recovered first:") for w in api.warnings)
        assert [s.name for s in api.list("vm")] == ["kept"] and api.check("vm").clean
