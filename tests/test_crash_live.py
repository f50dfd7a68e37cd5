"""Crash safety of qcow2 while QEMU runs: SIGKILL snaptree at every checkpoint.

The scene differs from the offline harness in one way: a QEMU process owns
both disks for the whole walk and outlives the killed ``snaptree`` process,
so ``recover``, ``check`` and the retry all talk to the same QEMU.  Data is
read the way the guest sees it:

* a ``qemu-storage-daemon`` exports the disks over NBD; writes and digests
  go through ``qemu-io`` / ``qemu-img convert`` on the NBD exports
  (create and delete, internal and external mode);
* an OS-less ``qemu-system-x86_64`` runs the revert walk, because QEMU can
  revert a running VM only to an internal snapshot with memory
  (``snapshot-load``); writes go through HMP ``qemu-io``, and digests read
  the active image with ``qemu-img convert -U`` after QEMU flushed it.
  The same VM runs create and delete of external snapshots with a memory
  file.  After ``recover`` the VM must be running again.
* a VM started from a launch recipe (``qemu.launch``) runs the reverts that
  restart QEMU: an external snapshot with a memory file (``-incoming``) and a
  disk-only one (a fresh boot); ``recover`` must start a VM the kill left
  down.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from crash_harness import CrashScene, walk_kill_points
from qemu_fixtures import QemuProcess, RecipeVM, make_images, start_daemon, start_vm, write_recipe
from snaptree.testing import VolumeHandle
from snaptree_qcow2 import active_image, qmp

pytestmark = [pytest.mark.qemu, pytest.mark.crash]


class LiveScenes:
    """Starts one QEMU per scene folder and kills it when the folder is cleaned up."""

    def __init__(self, kind: str, mode: str):
        self.kind = kind            # "daemon" or "vm"
        self.mode = mode            # qcow2.mode
        self.processes: dict[str, QemuProcess] = {}

    # -- the harness callbacks --------------------------------------------------

    def make_volumes(self, base: str) -> list[VolumeHandle]:
        images = make_images(base, 2)
        options = {"qcow2.mode": self.mode}
        if self.kind == "daemon":
            process = start_daemon(base, images)
        elif self.kind == "recipe":
            options["qemu.launch"] = write_recipe(base, images, memory_mib=16)
            process = RecipeVM(options["qemu.launch"], images, os.path.join(base, "vm.qmp"))
        else:
            process = start_vm(base, images, memory_mib=16)
        self.processes[base] = process
        return [VolumeHandle(spec=f"qcow2:{image}",
                             fill=lambda seed, i=index: self._fill(process, i, seed),
                             digest=lambda i=index, p=image: self._digest(process, i, p, base),
                             group_options=options,
                             qmp_socket=process.qmp_socket)
                for index, image in enumerate(images)]

    def cleanup(self, base: str) -> None:
        process = self.processes.pop(base, None)
        if process is not None:
            process.kill()
        shutil.rmtree(base, ignore_errors=True)

    def close(self) -> None:
        for base in list(self.processes):
            self.cleanup(base)

    def vm_running(self, scene: CrashScene) -> list[str]:
        """A crash must not leave the guest paused once ``recover`` ran."""
        socket = scene.volumes[0].qmp_socket
        with qmp.QMPSession(socket) as session:
            status = session.execute("query-status")["status"]
        return [] if status == "running" else [f"VM left {status!r} after recover"]

    # -- guest-side I/O -----------------------------------------------------------

    @staticmethod
    def _writes(seed: int) -> list[str]:
        return [f"write -P {seed % 251 + 1} 0 256k",
                f"write -P {(seed * 7) % 251 + 1} {4 << 20} 128k"]

    def _fill(self, process: QemuProcess, index: int, seed: int) -> None:
        if self.kind == "daemon":
            argv = ["qemu-io", "-f", "raw"]
            for command in self._writes(seed):
                argv += ["-c", command]
            subprocess.run(argv + [_nbd_uri(process, index)], check=True, capture_output=True)
            return
        for command in self._writes(seed) + ["flush"]:
            _hmp_qemu_io(process, index, command)

    def _digest(self, process: QemuProcess, index: int, image: str, base: str) -> str:
        raw = os.path.join(base, f"digest{index}.raw")
        if self.kind == "daemon":
            source = ["-f", "raw", _nbd_uri(process, index)]
        else:
            # QEMU keeps qcow2 metadata in its cache: flush it before reading the file
            _hmp_qemu_io(process, index, "flush")
            source = ["-U", "-f", "qcow2", active_image(image)]
        subprocess.run(["qemu-img", "convert", *source, "-O", "raw", raw], check=True,
                       capture_output=True)
        try:
            with open(raw, "rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        finally:
            os.unlink(raw)


def _nbd_uri(process: QemuProcess, index: int) -> str:
    return f"nbd+unix:///disk{index}?socket={process.nbd_socket}"


def _hmp_qemu_io(process: QemuProcess, index: int, command: str) -> None:
    # -d names the guest device, which follows the top node after an external snapshot
    with qmp.QMPSession(process.qmp_socket) as session:
        out = session.execute("human-monitor-command",
                              {"command-line": f'qemu-io -d vd{index}/virtio-backend "{command}"'})
    if "rror" in out or "read-only" in out:
        raise AssertionError(f"qemu-io vd{index} {command!r}: {out}")


def _walk(backend, operation, short_dir, scenes, crash_totals, **kwargs):
    try:
        stats = walk_kill_points(backend, operation, short_dir, scenes.make_volumes,
                                 scenes.cleanup, **kwargs)
    finally:
        scenes.close()
    crash_totals.append(stats)
    assert stats.tried >= 6
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.survived == stats.tried


@pytest.mark.parametrize("mode", ["internal", "external"])
@pytest.mark.parametrize("operation", ["create", "delete"])
def test_live_disks_survive_every_kill_point(operation, mode, short_dir, crash_totals):
    """Disk-only snapshots through a storage daemon's QMP transaction / block-commit."""
    _walk(f"qemu-{mode[:3]}", operation, short_dir, LiveScenes("daemon", mode), crash_totals)


@pytest.mark.parametrize("operation", ["create", "revert", "delete"])
def test_live_memory_survives_every_kill_point(operation, short_dir, crash_totals):
    """Internal snapshots with VM memory: snapshot-save, snapshot-load, delete, on a VM."""
    scenes = LiveScenes("vm", "internal")
    _walk("qemu-mem", operation, short_dir, scenes, crash_totals, memory=True,
          extra_checks=scenes.vm_running)


@pytest.mark.parametrize("operation", ["create", "delete"])
def test_live_memory_file_survives_every_kill_point(operation, short_dir, crash_totals):
    """External snapshots with a memory file (transaction, then migrate, then cont).

    Their revert restarts QEMU: see the recipe walks below.
    """
    scenes = LiveScenes("vm", "external")
    _walk("qemu-mfile", operation, short_dir, scenes, crash_totals, memory=True,
          extra_checks=scenes.vm_running)


@pytest.mark.parametrize("memory", [True, False], ids=["memory-file", "disk-only"])
def test_live_restart_revert_survives_every_kill_point(memory, short_dir, crash_totals):
    """External revert on a running VM: quit QEMU, new overlays, start it from the recipe
    (loading the memory file with -incoming, or booting afresh)."""
    scenes = LiveScenes("recipe", "external")
    _walk("qemu-restart" + ("-mem" if memory else ""), "revert", short_dir, scenes, crash_totals,
          memory=memory, extra_checks=scenes.vm_running)
