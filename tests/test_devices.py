"""snaptree.devices: waiting for loop devices with kernel (or udev) events."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from snaptree.devices import (
    DeviceWatcher,
    is_present,
    run_and_wait,
    udev_running,
    wait_for_block_devices,
)
from snaptree.errors import BackendError, DeviceTimeout, InvalidInput

root = pytest.mark.root


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as handle:
        handle.truncate(8 << 20)
    return str(path)


def _losetup(*args: str) -> str:
    return subprocess.run(["losetup", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_default_source_follows_udev_daemon():
    assert DeviceWatcher().source == ("udev" if udev_running() else "kernel")


def test_bad_source_and_node_refused():
    with pytest.raises(InvalidInput):
        DeviceWatcher(source="smoke-signals")
    with DeviceWatcher() as watcher:
        with pytest.raises(InvalidInput):
            watcher.wait_for_add("dev/loop0", timeout=0.1)


def test_timeout_is_a_backend_error_naming_the_node():
    started = time.monotonic()
    with DeviceWatcher() as watcher:
        with pytest.raises(DeviceTimeout, match=r"/dev/snaptree-never did not appear within 0.5s"):
            watcher.wait_for_add("/dev/snaptree-never", timeout=0.5)
    assert issubclass(DeviceTimeout, BackendError)
    assert time.monotonic() - started >= 0.5


def test_missing_directory_is_watched_through_an_ancestor():
    with DeviceWatcher() as watcher:
        with pytest.raises(DeviceTimeout):
            watcher.wait_for_add("/dev/snaptree-no-such-dir/node", timeout=0.2)


def test_absent_node_returns_at_once_for_remove():
    with DeviceWatcher() as watcher:
        watcher.wait_for_remove("/dev/snaptree-never", timeout=5)
        assert watcher.wakeups == 0


@root
def test_loop_device_appears_and_goes_away(image):
    with DeviceWatcher() as watcher:
        device = _losetup("--find", "--show", image)
        try:
            assert watcher.wait_for_add(device, timeout=10) == device
            assert is_present(device)
        except BaseException:
            _losetup("--detach", device)
            raise
    with DeviceWatcher() as watcher:
        _losetup("--detach", device)
        watcher.wait_for_remove(device, timeout=10)
    # the node itself stays in /dev; only the binding went away
    assert not is_present(device)


@root
def test_wait_wakes_on_the_event_not_on_a_timer(image):
    """A device bound by another thread mid-wait is seen through an event."""
    free = _losetup("--find")
    box: dict[str, str] = {}

    def attach_later():
        time.sleep(0.3)
        box["device"] = _losetup("--show", free, image)

    with DeviceWatcher() as watcher:
        worker = threading.Thread(target=attach_later)
        worker.start()
        started = time.monotonic()
        try:
            watcher.wait_for_add(free, timeout=10)
            elapsed = time.monotonic() - started
        finally:
            worker.join()
            if "device" in box:
                _losetup("--detach", box["device"])
    assert box["device"] == free
    assert watcher.wakeups >= 1
    assert elapsed < 10


@root
def test_run_and_wait_with_a_chosen_device(image):
    device = run_and_wait(lambda: _losetup("--find", "--show", image), lambda dev: dev)
    try:
        assert is_present(device)
        wait_for_block_devices([device], timeout=1)  # already there: at once
    finally:
        run_and_wait(lambda: _losetup("--detach", device), device, present=False)
    assert not is_present(device)


@root
def test_remove_timeout_when_device_stays(image):
    device = _losetup("--find", "--show", image)
    try:
        with pytest.raises(DeviceTimeout, match="did not go away"):
            wait_for_block_devices([device], timeout=0.3, present=False)
    finally:
        _losetup("--detach", device)


def test_regular_file_is_not_a_device(tmp_path):
    path = tmp_path / "plain"
    path.write_bytes(b"x")
    assert not is_present(str(path))
    assert not is_present(os.path.join(str(tmp_path), "missing"))
