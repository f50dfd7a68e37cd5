"""The ``xl snapshot`` flow, seen from the hooks: pause, memory, disks, resume.

A spy plugin wraps every VM and memory hook and records the order in which
the coordinator calls them against a real QEMU.
"""

from __future__ import annotations

import pytest

from qemu_fixtures import make_images, start_vm
from snaptree import Snaptree, hookimpl

pytestmark = [pytest.mark.qemu]


class Spy:
    def __init__(self):
        self.calls: list[str] = []

    def _record(self, name):
        result = yield
        self.calls.append(name if result is not None else f"{name}:none")
        return result

    @hookimpl(wrapper=True)
    def snaptree_vm_suspend(self, group, ctx):
        return (yield from self._record("snaptree_vm_suspend"))

    @hookimpl(wrapper=True)
    def snaptree_vm_resume(self, group, ctx):
        return (yield from self._record("snaptree_vm_resume"))

    @hookimpl(wrapper=True)
    def snaptree_memory_save(self, group, ctx):
        return (yield from self._record("snaptree_memory_save"))

    @hookimpl(wrapper=True)
    def snaptree_memory_restore(self, group, snapshot, ctx):
        return (yield from self._record("snaptree_memory_restore"))

    @hookimpl(wrapper=True)
    def snaptree_memory_delete(self, group, memory, ctx):
        return (yield from self._record("snaptree_memory_delete"))

    @hookimpl(wrapper=True)
    def snaptree_snapshot(self, backend, volumes, ctx):
        return (yield from self._record("snaptree_snapshot"))

    @hookimpl(wrapper=True)
    def snaptree_revert(self, backend, members, ctx):
        return (yield from self._record("snaptree_revert"))


@pytest.fixture
def vm(tmp_path):
    images = make_images(str(tmp_path), 2)
    process = start_vm(str(tmp_path), images)
    yield process, images
    process.kill()


@pytest.mark.parametrize("mode", ["internal", "external"])
def test_memory_snapshot_hook_order(tmp_path, vm, mode):
    process, images = vm
    spy = Spy()
    with Snaptree(str(tmp_path / "state"), plugins=[spy]) as api:
        api.create_group("vm", [f"qcow2:{p}" for p in images], qmp_socket=process.qmp_socket,
                         options={"qcow2.mode": mode})
        snap = api.create("vm", "ram", memory=True)
        assert spy.calls == ["snaptree_vm_suspend", "snaptree_memory_save", "snaptree_snapshot",
                             "snaptree_vm_resume"]
        assert snap.memory is not None
        spy.calls.clear()
        if mode == "internal":
            api.revert("vm", "ram")
            assert spy.calls == ["snaptree_vm_suspend", "snaptree_revert", "snaptree_memory_restore",
                                 "snaptree_vm_resume"]
        spy.calls.clear()
        api.delete("vm", "ram")
        assert spy.calls == ["snaptree_memory_delete"]
