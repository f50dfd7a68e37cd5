"""qcow2 faults at the QEMU boundary: QEMU dies mid-create, qemu-img is missing.

QEMU is SIGKILLed at the moment snaptree sends the QMP command that makes
the snapshot (``transaction`` for disks, the ``snapshot-save`` job for
internal snapshots with memory).  The CLI runs in this process so a wrapper
around the backend's one QMP boundary (:class:`snaptree_qcow2.qmp.QMPSession`)
can kill QEMU right before the command leaves; everything else is real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from qemu_fixtures import make_images, qemu_io, start_daemon, start_vm
from snaptree import Snaptree
from snaptree.cli import main
from snaptree.testing import run_cli
from snaptree_qcow2 import active_image, qmp
from snaptree_qcow2.layout import snapshot_dir

pytestmark = [pytest.mark.qemu]


@pytest.fixture
def short_dir():
    """Images and sockets under a short path (unix socket paths must fit 108 bytes)."""
    path = tempfile.mkdtemp(prefix="stfq-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _tags(image: str) -> list[str]:
    out = subprocess.run(["qemu-img", "snapshot", "-l", image], capture_output=True,
                         text=True, check=True).stdout
    # header lines: "Snapshot list:" and the column titles; one line per tag after them
    return [line.split()[1] for line in out.splitlines()[2:] if line.strip()]


def _image_problems(image: str) -> list[str]:
    done = subprocess.run(["qemu-img", "check", "--output=json", image], capture_output=True,
                          text=True)
    # exit 0: clean; 3: only leaked clusters (a killed QEMU may leave those, harmless)
    if done.returncode not in (0, 3):
        return [f"qemu-img check {image}: exit {done.returncode}: {done.stderr.strip()}"]
    report = json.loads(done.stdout)
    return [f"{image}: {key}={report[key]}" for key in ("corruptions", "check-errors")
            if report.get(key)]


def _cli(capsys, state_dir: str, *args: str) -> tuple[int, list[str]]:
    code = main(["--state-dir", state_dir, *args])
    return code, capsys.readouterr().err.splitlines()


def _guest_write(process, kind: str, index: int, command: str) -> None:
    """Write through QEMU as the guest would, and flush (QEMU is about to be killed)."""
    if kind == "daemon":
        subprocess.run(["qemu-io", "-f", "raw", "-c", command, "-c", "flush",
                        f"nbd+unix:///disk{index}?socket={process.nbd_socket}"],
                       check=True, capture_output=True)
        return
    with qmp.QMPSession(process.qmp_socket) as session:
        for each in (command, "flush"):
            out = session.execute("human-monitor-command",
                                  {"command-line": f'qemu-io disk{index} "{each}"'})
            assert "rror" not in out, out


def _kill_before(monkeypatch, process, command: str) -> list[str]:
    """SIGKILL ``process`` just before ``command`` is sent; return the commands seen."""
    seen: list[str] = []
    real_execute, real_run_job = qmp.QMPSession.execute, qmp.QMPSession.run_job

    def execute(self, name, *args, **kwargs):
        seen.append(name)
        if name == command:
            process.kill()
        return real_execute(self, name, *args, **kwargs)

    def run_job(self, name, *args, **kwargs):
        seen.append(name)
        if name == command:
            process.kill()
        return real_run_job(self, name, *args, **kwargs)

    monkeypatch.setattr(qmp.QMPSession, "execute", execute)
    monkeypatch.setattr(qmp.QMPSession, "run_job", run_job)
    return seen


SCENES = [
    # (QEMU, mode, --memory, the command QEMU dies at)
    pytest.param("daemon", "internal", False, "transaction", id="disks-internal"),
    pytest.param("daemon", "external", False, "transaction", id="disks-external"),
    pytest.param("vm", "internal", True, "snapshot-save", id="memory-internal"),
    pytest.param("vm", "external", True, "transaction", id="memory-external"),
]


@pytest.mark.parametrize("kind, mode, memory, command", SCENES)
def test_qemu_killed_at_the_snapshot_command(kind, mode, memory, command, short_dir, processes,
                                             monkeypatch, capsys):
    images = make_images(short_dir, 2)
    process = start_daemon(short_dir, images) if kind == "daemon" else start_vm(
        short_dir, images, memory_mib=16)
    processes.append(process)
    state = os.path.join(short_dir, "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=process.qmp_socket,
                         options={"qcow2.mode": mode})
    for index in range(len(images)):  # data that must survive QEMU's death
        _guest_write(process, kind, index, f"write -P {0x41 + index} 0 128k")

    seen = _kill_before(monkeypatch, process, command)
    code, err = _cli(capsys, state, "create", "vm", "s1", *(["--memory"] if memory else []))
    monkeypatch.undo()

    assert command in seen
    assert process.proc.poll() is not None, "QEMU was not killed"
    assert code == 6, err
    assert len(err) == 1 and err[0].startswith("snaptree: error: qcow2:"), err
    assert "lost QEMU" in err[0]
    assert "undo incomplete" not in err[0]  # a dead VM is not left paused

    code, lines = _cli(capsys, state, "recover")
    assert code == 0, lines
    with Snaptree(state, auto_recover=False) as api:
        assert api.list("vm") == []
        assert api.catalog.journal_open("vm") == []
        drift = api.check("vm")
        assert drift.clean and not drift.foreign, drift.as_dict()
    problems = []
    for index, image in enumerate(images):
        assert active_image(image) == image
        assert _tags(image) == []
        leftovers = os.listdir(snapshot_dir(image)) if os.path.isdir(snapshot_dir(image)) else []
        assert leftovers == [], leftovers
        problems += _image_problems(image)
        qemu_io(image, f"read -P {0x41 + index} 0 128k")
    assert problems == []


# -- qemu-img missing ----------------------------------------------------------


def _tree_digest(root: str, skip: str) -> dict[str, str]:
    """sha256 of every file under ``root`` (but ``skip``), keyed by relative path."""
    out = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(directory, d) != skip)
        for name in sorted(filenames):
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.file_digest(handle, "sha256").hexdigest()
    return out


@pytest.mark.parametrize("mode", ["internal", "external"])
@pytest.mark.parametrize("operation", [["create", "vm", "s2"], ["revert", "vm", "s1"],
                                       ["delete", "vm", "s1"]], ids=lambda a: a[0])
def test_qemu_img_missing(operation, mode, tmp_path):
    images = make_images(str(tmp_path), 2)
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"qcow2:{p}" for p in images], options={"qcow2.mode": mode})
        for image in images:
            qemu_io(image, "write -P 0x5a 0 64k")
        api.create("vm", "s1")
        for image in images:
            qemu_io(active_image(image), "write -P 0x6b 0 64k")
        catalog_before = [(s.name, s.state.value) for s in api.list("vm")]
    files_before = _tree_digest(str(tmp_path), skip=state)
    empty_path = tmp_path / "no-tools"
    empty_path.mkdir()

    done = run_cli(operation, state, env={"PATH": str(empty_path)})

    assert done.returncode == 6, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("snaptree: error: qcow2:") and "'qemu-img'" in lines[0], lines
    assert "not found on PATH" in lines[0]
    assert _tree_digest(str(tmp_path), skip=state) == files_before
    with Snaptree(state, auto_recover=False) as api:
        assert [(s.name, s.state.value) for s in api.list("vm")] == catalog_before
        assert api.catalog.journal_open("vm") == []
        assert api.check("vm").clean
