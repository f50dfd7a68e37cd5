"""Faults: full disks, read-only state, missing tools, non-root users."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from snaptree import Snaptree
from snaptree.errors import OutOfSpace, PermissionDenied, StateError, ToolMissing
from snaptree.runner import CommandRunner
from snaptree.testing import run_cli


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
def test_out_of_space_during_snapshot_and_revert(tmp_path, small_tmpfs):
    disk = small_tmpfs / "d.img"
    size = 2560 * 1024
    disk.write_bytes(os.urandom(size))
    state = str(tmp_path / "state")
    with Snaptree(state) as api:
        api.create_group("vm", [f"raw:{disk}"])
        api.create("vm", "a")                       # 5 MiB used of 6
        disk.write_bytes(os.urandom(size))
        before = _sha(disk)
        with pytest.raises(OutOfSpace, match="out of space"):
            api.create("vm", "b")
        assert _sha(disk) == before
        assert [s.name for s in api.list("vm")] == ["a"]
        assert api.check("vm").clean
        leftovers = [n for n in os.listdir(small_tmpfs / ".d.img.snaptree") if n.endswith(".partial")]
        assert leftovers == []
        filler = small_tmpfs / "filler"
        with open(filler, "wb") as f:       # leave too little room for a revert copy
            try:
                f.write(os.urandom(900 * 1024))
            except OSError:
                pass
        with pytest.raises(OutOfSpace):
            api.revert("vm", "a")
        assert _sha(disk) == before, "a failed revert must leave the volume as it was"
        assert not (small_tmpfs / ".d.img.snaptree-revert.partial").exists()
        assert api.current("vm").name == "a"
        filler.unlink()
        api.delete("vm", "a")
        api.create("vm", "again")                 # space is back: works again
    result = run_cli(["list", "vm"], state)
    assert result.returncode == 0


@pytest.mark.root
def test_out_of_space_one_line_on_cli(tmp_path, small_tmpfs):
    disk = small_tmpfs / "d.img"
    disk.write_bytes(os.urandom(4 * 1024 * 1024))
    state = str(tmp_path / "state")
    assert run_cli(["group", "create", "vm", f"raw:{disk}"], state).returncode == 0
    result = run_cli(["create", "vm", "a"], state)
    assert result.returncode == 6
    assert result.stderr.count("\n") == 1 and "out of space" in result.stderr


@pytest.mark.root
def test_read_only_state_directory(tmp_path):
    mnt = tmp_path / "statefs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        disk = tmp_path / "d.img"
        disk.write_bytes(b"x" * 8192)
        state = str(mnt / "state")
        assert run_cli(["group", "create", "vm", f"raw:{disk}"], state).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        result = run_cli(["create", "vm", "a"], state)
        assert result.returncode in (8, 9), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "read-only" in result.stderr or "not writable" in result.stderr
        assert disk.read_bytes() == b"x" * 8192
        assert not (tmp_path / ".d.img.snaptree").exists()
        with pytest.raises((PermissionDenied, StateError)):
            Snaptree(state)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_tool_missing_is_one_clear_error(monkeypatch):
    runner = CommandRunner("qcow2")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissing, match="'qemu-img' not found on PATH"):
        runner.run(["qemu-img", "info", "/x"])
    with pytest.raises(ToolMissing):
        runner.which("qemu-img")


def test_runner_maps_failures_and_injects_faults(tmp_path):
    runner = CommandRunner("test")
    from snaptree.errors import CommandFailed
    with pytest.raises(CommandFailed) as exc:
        runner.run([sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"])
    assert exc.value.returncode == 3 and exc.value.stderr.strip() == "boom"
    assert "boom" in str(exc.value)
    runner.fail_on_call(2)
    with pytest.raises(CommandFailed, match="injected"):
        runner.run(["true"])
    with pytest.raises(OutOfSpace):
        runner.run([sys.executable, "-c",
                    "import sys; sys.stderr.write('write: No space left on device'); sys.exit(1)"])


@pytest.mark.root
def test_state_dir_created_private_for_nobody(tmp_path):
    """A non-root user gets the XDG default and a 0700 directory."""
    import tempfile
    home = __import__("pathlib").Path(tempfile.mkdtemp(dir="/tmp"))
    shutil.chown(home, "nobody")
    env = {"HOME": str(home), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
         "snaptree", "--json", "group", "list"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    state = home / ".local" / "state" / "snaptree"
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"
    assert oct(os.stat(state / "catalog.sqlite").st_mode & 0o777) == "0o600"


@pytest.mark.root
def test_non_root_user_asking_for_root_only_backend(tmp_path):
    import tempfile
    home = tempfile.mkdtemp(dir="/tmp")
    shutil.chown(home, "nobody")
    env = {"HOME": home, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
         "snaptree", "group", "create", "vm", f"btrfs:{home}"], capture_output=True, text=True, env=env)
    shutil.rmtree(home, ignore_errors=True)
    assert result.returncode == 9, result.stderr
    assert result.stderr.count("\n") == 1
    assert "backend 'btrfs' needs root" in result.stderr
