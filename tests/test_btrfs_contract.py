"""The conformance kit run against the btrfs backend on a real loop-mounted btrfs."""

from __future__ import annotations

import itertools
import os

import pytest

from snaptree.testing import BackendContract, VolumeHandle

from btrfs_fixtures import digest_tree, make_subvolume, write_tree

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


class TestBtrfsContract(BackendContract):
    @pytest.fixture
    def make_volume(self, btrfs_mount):
        counter = itertools.count(1)

        def factory() -> VolumeHandle:
            path = make_subvolume(os.path.join(btrfs_mount, f"vol{next(counter)}"))
            return VolumeHandle(
                spec=f"btrfs:{path}",
                fill=lambda seed: write_tree(path, seed, files=12, large_bytes=256 << 10,
                                             sparse_bytes=4 << 20),
                digest=lambda: digest_tree(path))

        return factory
