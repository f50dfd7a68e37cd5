"""Shared fixtures and the skip rules for tests that need root, QEMU, btrfs."""

from __future__ import annotations

import os
import shutil

import pytest

pytest_plugins = ["snaptree.testing"]


def is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    reasons = {
        "root": None if is_root() else "needs root for loop devices and mounts",
        "btrfs": None if shutil.which("mkfs.btrfs") else "needs btrfs-progs (mkfs.btrfs)",
        "qemu": None if shutil.which("qemu-img") and shutil.which("qemu-system-x86_64")
        else "needs qemu-utils and qemu-system-x86",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    return str(path)
