"""Real QEMU processes for the qcow2 tests: a storage daemon and an OS-less VM.

Both start with a QMP socket and every disk attached the way a guest uses it
(an NBD export for the daemon, a virtio-blk device for the VM): QEMU drops
an external snapshot's overlay from a node nothing uses.  Processes are
killed and reaped at teardown.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from typing import Iterator

import pytest

__all__ = ["QemuProcess", "make_images", "storage_daemon", "start_vm", "start_daemon",
           "image_digest", "qemu_io", "kvm_usable", "write_pattern"]

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


def make_images(directory: str, count: int, size: str = "16M") -> list[str]:
    images = []
    for index in range(count):
        path = os.path.join(directory, f"disk{index}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, size], check=True)
        images.append(path)
    return images


def _blockdev_args(images: list[str]) -> list[str]:
    args = []
    for index, image in enumerate(images):
        args += ["-blockdev", f"driver=file,filename={image},node-name=file{index}",
                 "-blockdev", f"driver=qcow2,file=file{index},node-name=disk{index}"]
    return args


def start_daemon(directory: str, images: list[str]) -> QemuProcess:
    qmp = os.path.join(directory, "daemon.qmp")
    nbd = os.path.join(directory, "daemon.nbd")
    argv = ["qemu-storage-daemon",
            "--chardev", f"socket,path={qmp},server=on,wait=off,id=monitor",
            "--monitor", "chardev=monitor",
            "--nbd-server", f"addr.type=unix,addr.path={nbd}"]
    argv += [a.replace("-blockdev", "--blockdev") for a in _blockdev_args(images)]
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
    argv = ["qemu-io", "-f", "qcow2"] + (["-U"] if force_share else []) + ["-c", command, image]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
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
