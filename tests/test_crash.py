"""Crash safety: SIGKILL at every step boundary, for each backend that runs here."""

from __future__ import annotations

import os
import shutil

import pytest

from crash_harness import walk_kill_points
from test_raw import raw_factory

pytestmark = pytest.mark.crash

OPERATIONS = ["create", "revert", "delete"]


def _cleanup(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _raw_volumes(base: str):
    factory = raw_factory(base)
    return [factory(), factory()]


def _qcow2_volumes(mode: str):
    from qemu_fixtures import make_images
    from test_qcow2 import _handle

    def make(base: str):
        return [_handle(path, base, mode) for path in make_images(base, 2)]
    return make


def _btrfs_volumes(mount: str):
    import itertools
    from btrfs_fixtures import digest_tree, make_subvolume, write_tree
    from snaptree.testing import VolumeHandle
    counter = itertools.count()

    def make(base: str):
        tag = os.path.basename(base)
        out = []
        for _ in range(2):
            path = make_subvolume(os.path.join(mount, f"{tag}-v{next(counter)}"))
            out.append(VolumeHandle(
                spec=f"btrfs:{path}",
                fill=lambda seed, p=path: write_tree(p, seed, files=8, large_bytes=128 << 10,
                                                      sparse_bytes=1 << 20),
                digest=lambda p=path: digest_tree(p)))
        return out
    return make


def _check(stats, crash_totals):
    crash_totals.append(stats)
    assert stats.tried >= 6
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.survived == stats.tried


@pytest.mark.parametrize("operation", OPERATIONS)
def test_raw_survives_every_kill_point(operation, tmp_path, crash_totals):
    _check(walk_kill_points("raw", operation, str(tmp_path), _raw_volumes, _cleanup), crash_totals)


@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["internal", "external"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_qcow2_offline_survives_every_kill_point(operation, mode, tmp_path, crash_totals):
    stats = walk_kill_points(f"qcow2-{mode[:3]}", operation, str(tmp_path), _qcow2_volumes(mode), _cleanup)
    _check(stats, crash_totals)


@pytest.mark.root
@pytest.mark.btrfs
@pytest.mark.parametrize("operation", OPERATIONS)
def test_btrfs_survives_every_kill_point(operation, tmp_path, btrfs_mount, crash_totals):
    stats = walk_kill_points("btrfs", operation, str(tmp_path), _btrfs_volumes(btrfs_mount), _cleanup)
    _check(stats, crash_totals)
