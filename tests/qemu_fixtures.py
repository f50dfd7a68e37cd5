"""Real QEMU processes for the qcow2 tests: a storage daemon and an OS-less VM.

Both start with a QMP socket and every disk attached the way a guest uses it
(an NBD export for the daemon, a virtio-blk device for the VM): QEMU drops
an external snapshot's overlay from a node nothing uses.  Processes are
killed and reaped at teardown.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from typing import Iterator

import pytest

__all__ = ["QemuProcess", "make_images", "storage_daemon", "start_vm", "start_daemon",
           "image_digest", "qemu_io", "kvm_usable", "write_pattern", "write_recipe", "RecipeVM", "short_dir", "peer_pid"]

_kvm_answer: bool | None = None


def kvm_usable() -> bool:
    """True when a KVM guest really starts here (opening /dev/kvm is not enough)."""
    global _kvm_answer
    if _kvm_answer is None:
        try:
            probe = subprocess.run(
                ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-m", "16",
                 "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-S", "-qmp", "stdio"],
                input=b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
                capture_output=True, timeout=20)
            _kvm_answer = probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _kvm_answer = False
    return _kvm_answer


class QemuProcess:
    """A QEMU child process with a QMP socket."""

    def __init__(self, argv: list[str], qmp_socket: str, images: list[str]):
        self.argv = argv
        self.qmp_socket = qmp_socket
        self.images = images
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not os.path.exists(qmp_socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("QEMU did not open its QMP socket")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stderr:
            self.proc.stderr.close()

    def quit(self) -> None:
        """Shut QEMU down cleanly (it flushes the images)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.kill()


def make_images(directory: str, count: int, size: str = "16M", written: str = "") -> list[str]:
    """``count`` fresh qcow2 images; with ``written`` (e.g. ``64M``) that much
    data is written at the start of each, a pattern byte per disk."""
    images = []
    for index in range(count):
        path = os.path.join(directory, f"disk{index}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size], check=True)
        if written:
            subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                            f"write -P {index % 250 + 1} 0 {written}", path],
                           check=True, capture_output=True)
        images.append(path)
    return images


def _blockdev_args(images: list[str], direct: bool = False) -> list[str]:
    cache = ",cache.direct=on" if direct else ""
    args = []
    for index, image in enumerate(images):
        args += ["-blockdev", f"driver=file,filename={image},node-name=file{index}{cache}",
                 "-blockdev", f"driver=qcow2,file=file{index},node-name=disk{index}"]
    return args


def start_daemon(directory: str, images: list[str], *, direct: bool = False) -> QemuProcess:
    """A ``qemu-storage-daemon`` exporting each image over NBD; ``direct``
    opens them with O_DIRECT, as a VM with ``cache=none`` does."""
    qmp = os.path.join(directory, "daemon.qmp")
    nbd = os.path.join(directory, "daemon.nbd")
    argv = ["qemu-storage-daemon",
            "--chardev", f"socket,path={qmp},server=on,wait=off,id=monitor",
            "--monitor", "chardev=monitor",
            "--nbd-server", f"addr.type=unix,addr.path={nbd}"]
    argv += [a.replace("-blockdev", "--blockdev") for a in _blockdev_args(images, direct)]
    for index in range(len(images)):
        argv += ["--export", f"type=nbd,id=export{index},node-name=disk{index},writable=on"]
    process = QemuProcess(argv, qmp, images)
    process.nbd_socket = nbd
    deadline = time.monotonic() + 30
    while not os.path.exists(nbd) and time.monotonic() < deadline:  # opened after QMP
        time.sleep(0.02)
    return process


def start_vm(directory: str, images: list[str], memory_mib: int = 128) -> QemuProcess:
    qmp = os.path.join(directory, "vm.qmp")
    accel = (["-accel", "kvm", "-cpu", "host,-arch-capabilities"] if kvm_usable()
             else ["-accel", "tcg"])
    argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-m", str(memory_mib),
            *accel, "-qmp", f"unix:{qmp},server=on,wait=off"]
    argv += _blockdev_args(images)
    for index in range(len(images)):
        argv += ["-device", f"virtio-blk-pci,drive=disk{index},id=vd{index},share-rw=on"]
    return QemuProcess(argv, qmp, images)


@pytest.fixture
def processes() -> Iterator[list]:
    """A list a test appends the processes it starts to; each is killed afterwards."""
    started: list = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A work folder with a short path: QMP and NBD unix socket paths must fit 108 bytes."""
    path = tempfile.mkdtemp(prefix="stq-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def storage_daemon(tmp_path) -> Iterator:
    """Factory: ``storage_daemon(n)`` -> a daemon exporting ``n`` fresh qcow2 disks."""
    started: list[QemuProcess] = []

    def factory(count: int = 1) -> QemuProcess:
        images = make_images(str(tmp_path), count)
        process = start_daemon(str(tmp_path), images)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.kill()


def qemu_io(image: str, command: str, *, force_share: bool = False) -> str:
    argv = ["qemu-io", "-f", "qcow2"] + (["-r", "-U"] if force_share else []) + ["-c", command, image]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise AssertionError(f"{argv}: {done.stdout}{done.stderr}")
    if "Pattern verification failed" in done.stdout or "failed" in done.stderr:
        raise AssertionError(done.stdout + done.stderr)
    return done.stdout


def write_pattern(image: str, seed: int, size: int = 1 << 20) -> None:
    """Write a deterministic pattern from ``seed`` at two places of an idle image."""
    qemu_io(image, f"write -P {seed % 251 + 1} 0 {size}")
    qemu_io(image, f"write -P {(seed * 7) % 251 + 1} {4 * size} {size // 2}")


def image_digest(image: str, tmp_dir: str) -> str:
    """SHA-256 of the guest-visible content (through the backing chain)."""
    raw = os.path.join(tmp_dir, f".digest-{os.getpid()}.raw")
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", image, raw], check=True)
    try:
        digest = hashlib.sha256()
        with open(raw, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    finally:
        os.unlink(raw)


# -- VMs snaptree may restart: started from a launch recipe -----------------------


def write_recipe(directory: str, images: list[str], *, memory_mib: int = 64,
                 ram_file: str | None = None) -> str:
    """Write a launch recipe (group option ``qemu.launch``) for an OS-less VM on ``images``.

    With ``ram_file`` the guest RAM is that shared file, so a test can change
    guest memory from outside and see what a memory restore put back.
    """
    from snaptree_qcow2 import launch
    accel = (["-accel", "kvm", "-cpu", "host,-arch-capabilities"] if kvm_usable()
             else ["-accel", "tcg"])
    argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-m", str(memory_mib), *accel]
    if ram_file is not None:
        argv += ["-object", f"memory-backend-file,id=ram0,size={memory_mib}M,mem-path={ram_file},"
                            "share=on",
                 "-machine", "memory-backend=ram0"]
    return launch.write_recipe(os.path.join(directory, "vm-recipe.json"),
                               argv + launch.disk_args(images))


def peer_pid(socket_path: str) -> int | None:
    """The process id of the server listening on ``socket_path`` (``SO_PEERCRED``)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(socket_path)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0] or None
    except OSError:
        return None
    finally:
        probe.close()


class RecipeVM:
    """A daemonized QEMU started from a recipe; snaptree may replace it by another."""

    def __init__(self, recipe: str, images: list[str], qmp_socket: str):
        from snaptree.runner import CommandRunner
        from snaptree_qcow2 import launch, qmp

        self.recipe, self.images, self.qmp_socket = recipe, images, qmp_socket
        launch.Recipe.load(recipe, images, qmp_socket).start(
            CommandRunner("test"), qmp_socket, incoming=False)
        with qmp.QMPSession(qmp_socket) as session:
            session.execute("cont")

    @property
    def pid(self) -> int | None:
        return peer_pid(self.qmp_socket)

    def kill(self) -> None:
        """Kill whichever QEMU serves the socket now, and wait until it is gone."""
        pid = self.pid
        if pid is None:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], 30)
        finally:
            os.close(pidfd)
