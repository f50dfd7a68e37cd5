"""A real demo of the snapshot lifecycle: raw image files, then a running VM.

``python -m snaptree.demo [--keep DIR]`` makes two small disk images, groups
them as one VM, snapshots twice, draws the tree, reverts, checks the bytes
came back, renames, deletes, prunes, and prints each ``snaptree`` command as
it runs it.

Then, when QEMU is installed, the ``xl snapshot`` flow on a real (OS-less)
``qemu-system-x86_64``: start it from a launch recipe, snapshot its two qcow2
disks and its memory at one point, change both, revert, and check that the
guest's RAM and disks are back as they were.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _write(path: str, text: str, size: int = 16 * 1024 * 1024) -> None:
    with open(path, "r+b") as f:
        f.seek(1024 * 1024)
        f.write(text.encode() * 4096)
        f.truncate(size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snaptree.demo")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it afterwards")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="snaptree-demo-")
    os.makedirs(work, exist_ok=True)
    state = os.path.join(work, "state")
    disks = [os.path.join(work, name) for name in ("root.img", "data.img")]
    for d in disks:
        with open(d, "wb") as f:
            f.truncate(16 * 1024 * 1024)
        _write(d, f"{os.path.basename(d)} v1 ")

    def st(*cmd: str) -> None:
        shown = shlex.join(cmd)
        print(f"\n$ snaptree {shown}", flush=True)
        result = subprocess.run([sys.executable, "-m", "snaptree", "--state-dir", state, *cmd])
        if result.returncode != 0:
            raise SystemExit(f"demo: 'snaptree {shown}' failed with exit status {result.returncode}")

    try:
        st("backends")
        st("group", "create", "vm1", *[f"raw:{d}" for d in disks])
        v1 = [_sha(d) for d in disks]
        st("create", "vm1", "installed", "--description", "fresh install")
        for d in disks:
            _write(d, f"{os.path.basename(d)} v2 ")
        v2 = [_sha(d) for d in disks]
        st("create", "vm1", "configured", "--description", "after configuration")
        for d in disks:
            _write(d, f"{os.path.basename(d)} BROKEN ")
        st("list", "vm1")
        st("revert", "vm1", "installed")
        assert [_sha(d) for d in disks] == v1, "revert did not restore the bytes"
        print("\n# disks are byte-identical to snapshot 'installed'", flush=True)
        st("create", "vm1", "experiment")
        st("list", "vm1", "--tree")
        st("revert", "vm1", "configured")
        assert [_sha(d) for d in disks] == v2, "revert did not restore the bytes"
        print("\n# disks are byte-identical to snapshot 'configured'", flush=True)
        st("info", "vm1", "configured")
        st("edit", "vm1", "experiment", "--rename", "scratch", "--description", "tried, dropped")
        st("delete", "vm1", "installed")
        st("create", "vm1", "nightly-1")
        st("create", "vm1", "nightly-2")
        st("prune", "vm1", "--keep", "2", "--dry-run")
        st("prune", "vm1", "--keep", "2")
        st("list", "vm1", "--tree")
        assert _sha(disks[0]) == v2[0], "pruning changed the disks"
        st("check", "vm1")
        st("--json", "current", "vm1")
        if shutil.which("qemu-system-x86_64") and shutil.which("qemu-img"):
            _vm_demo(work, st)
        else:
            print("\n# skipping the VM part: qemu-system-x86_64 / qemu-img not installed")
        print("\ndemo: lifecycle complete; all checks passed", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


_RAM_MIB = 64
_RAM_MARK_AT = 40 * 1024 * 1024   # far from what the firmware touches


def _vm_demo(work: str, st) -> None:
    """Memory + disks of a running VM, snapshotted and reverted together."""
    from snaptree_qcow2 import launch
    from snaptree_qcow2.qmp import QMPSession

    vm_dir = tempfile.mkdtemp(prefix="stdemo-", dir="/tmp")  # unix socket paths stay short
    sock = os.path.join(vm_dir, "vm.qmp")
    ram = os.path.join(vm_dir, "guest.ram")
    images = [os.path.join(work, f"vm2-disk{i}.qcow2") for i in range(2)]
    for image in images:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "16M"], check=True)
    recipe = launch.write_recipe(os.path.join(work, "vm2-recipe.json"), [
        "qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg",
        "-m", str(_RAM_MIB),
        "-object", f"memory-backend-file,id=ram0,size={_RAM_MIB}M,mem-path={ram},share=on",
        "-machine", "memory-backend=ram0", *launch.disk_args(images)])

    def guest_io(command: str) -> str:
        out = []
        with QMPSession(sock) as session:
            for i in range(len(images)):
                out.append(session.execute("human-monitor-command", {
                    "command-line": f'qemu-io -d vd{i}/virtio-backend "{command}"'}))
        return "".join(out)

    def mark_ram(text: bytes) -> None:
        with open(ram, "r+b") as f:
            f.seek(_RAM_MARK_AT)
            f.write(text)

    def ram_mark(length: int) -> bytes:
        with open(ram, "rb") as f:
            f.seek(_RAM_MARK_AT)
            return f.read(length)

    print("\n# --- a running VM: memory and every disk at one point (the xl snapshot flow) ---")
    try:
        st("group", "create", "vm2", *[f"qcow2:{i}" for i in images], "--qmp", sock,
           "-o", f"qemu.launch={recipe}", "-o", "qcow2.mode=external")
        st("start", "vm2")
        guest_io("write -P 0x61 0 1M")
        mark_ram(b"guest memory at 'booted' " * 4)
        print("# the guest wrote 0x61 to both disks; its RAM holds \"guest memory at 'booted'\"")
        st("create", "vm2", "booted", "--memory", "--description", "disks + RAM")
        guest_io("write -P 0x62 0 1M")
        mark_ram(b"guest memory, later....  " * 4)
        print("# the guest moved on: 0x62 on the disks, other bytes in RAM")
        st("revert", "vm2", "booted")
        assert "Pattern verification failed" not in guest_io("read -P 0x61 0 1M"), \
            "the disks did not come back"
        assert ram_mark(25 * 4) == b"guest memory at 'booted' " * 4, "the RAM did not come back"
        print("# a new QEMU loaded the memory file: RAM and disks are back at 'booted', running")
        st("list", "vm2", "--tree")
        st("info", "vm2", "booted")
        st("delete", "vm2", "booted")
        st("check", "vm2")
    finally:
        try:
            with QMPSession(sock) as session:
                session.execute("quit")
        except Exception:
            pass  # not started, or gone already
        shutil.rmtree(vm_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
