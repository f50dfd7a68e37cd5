"""A real demo of the snapshot lifecycle on raw image files.

``python -m snaptree.demo [--keep DIR]`` makes two small disk images, groups
them as one VM, snapshots twice, draws the tree, reverts, checks the bytes
came back, deletes, and prints each ``snaptree`` command as it runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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
        shown = " ".join(cmd)
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
        st("delete", "vm1", "installed")
        st("list", "vm1", "--tree")
        st("check", "vm1")
        st("--json", "current", "vm1")
        print("\ndemo: lifecycle complete; all checks passed", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
