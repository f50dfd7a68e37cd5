"""The conformance kit against LVM: thick and thin volumes (needs device-mapper)."""

from __future__ import annotations

import pytest

from guest.lvm_env import DEVMAPPER_MARKS, digest_device, lvm_vg, make_lv, write_pattern
from snaptree.testing import BackendContract, VolumeHandle

pytestmark = DEVMAPPER_MARKS
__all__ = ["lvm_vg", "make_lv"]  # fixtures used through pytest


def _handle(vg: str, lv: str, device: str, options: dict) -> VolumeHandle:
    return VolumeHandle(spec=f"lvm:{vg}/{lv}",
                        fill=lambda seed: write_pattern(device, seed),
                        digest=lambda: digest_device(device),
                        group_options=options)


#: Each failed command is a create in its own child process, and under TCG a child costs
#: tens of seconds: the first two LVM commands failing (the first volume's snapshot, then
#: what follows it) keep the walk's point at the guest's price.
LVM_COMMAND_FAULTS = 2


class TestLvmThickContract(BackendContract):
    command_faults = LVM_COMMAND_FAULTS

    @pytest.fixture
    def make_volume(self, make_lv):
        def factory() -> VolumeHandle:
            vg, lv, device = make_lv(8, prefix="thick", reuse=True)
            return _handle(vg, lv, device, {})  # the default snapshot size policy
        return factory


class TestLvmThinContract(BackendContract):
    command_faults = LVM_COMMAND_FAULTS

    @pytest.fixture
    def make_volume(self, make_lv):
        def factory() -> VolumeHandle:
            vg, lv, device = make_lv(8, thin=True, prefix="thin", reuse=True)
            return _handle(vg, lv, device, {})
        return factory
