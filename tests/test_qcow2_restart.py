"""Reverts that need a fresh QEMU: snaptree shuts it down and starts it from a recipe.

The VM is an OS-less ``qemu-system-x86_64`` started from a launch recipe
(group option ``qemu.launch``).  Its RAM is a shared file, so the tests
change guest memory from outside and check that a revert to a snapshot with
memory puts the old bytes back; disks are written and checked through the
guest's own devices (HMP ``qemu-io -d``).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from qemu_fixtures import RecipeVM, kvm_usable, make_images, qemu_io, write_recipe
from snaptree import Snaptree, hookimpl
from snaptree.errors import InvalidInput, NotSupported
from snaptree.testing import run_cli
from snaptree_qcow2 import active_image, qmp
from snaptree_qcow2.layout import restart_marker

pytestmark = [pytest.mark.qemu]

MIB = 1 << 20
#: where the tests mark guest RAM: far from what SeaBIOS touches in 64 MiB
RAM_OFFSET = 40 * MIB


class Machine:
    """Disks, a recipe, a group and the running VM of one test."""

    def __init__(self, base: str, count: int = 2, *, mode: str = "internal", recipe: bool = True):
        self.base = base
        self.images = make_images(base, count)
        self.ram = os.path.join(base, "guest.ram")
        self.socket = os.path.join(base, "vm.qmp")
        self.recipe = write_recipe(base, self.images, ram_file=self.ram)
        self.vm = RecipeVM(self.recipe, self.images, self.socket)
        self.state = os.path.join(base, "state")
        options = {"qcow2.mode": mode}
        if recipe:
            options["qemu.launch"] = self.recipe
        with self.api() as api:
            api.create_group("vm", [f"qcow2:{p}" for p in self.images], qmp_socket=self.socket,
                             options=options)

    def api(self) -> Snaptree:
        return Snaptree(self.state)

    def hmp_io(self, index: int, command: str) -> str:
        with qmp.QMPSession(self.socket) as session:
            out = session.execute("human-monitor-command",
                                  {"command-line": f'qemu-io -d vd{index}/virtio-backend "{command}"'})
        return out

    def write(self, pattern: int) -> None:
        for index in range(len(self.images)):
            out = self.hmp_io(index, f"write -P {pattern} 0 64k")
            assert "rror" not in out, out

    def reads(self, pattern: int) -> bool:
        out = [self.hmp_io(i, f"read -P {pattern} 0 64k") for i in range(len(self.images))]
        return all("Pattern verification failed" not in o and "rror" not in o for o in out)

    def mark_ram(self, text: bytes) -> None:
        with open(self.ram, "r+b") as handle:
            handle.seek(RAM_OFFSET)
            handle.write(text)

    def ram_mark(self, length: int) -> bytes:
        with open(self.ram, "rb") as handle:
            handle.seek(RAM_OFFSET)
            return handle.read(length)

    def status(self) -> str:
        with qmp.QMPSession(self.socket) as session:
            return session.execute("query-status")["status"]

    def flush_and_check(self, pattern: int) -> None:
        """The disks hold ``pattern`` as the guest sees them and as files."""
        assert self.reads(pattern)
        for index in range(len(self.images)):
            self.hmp_io(index, "flush")
        for image in self.images:
            qemu_io(active_image(image), f"read -P {pattern} 0 64k", force_share=True)


@pytest.fixture
def machines(short_dir):
    made: list[Machine] = []

    def factory(*args, **kwargs) -> Machine:
        base = os.path.join(short_dir, f"m{len(made)}")
        os.makedirs(base)
        machine = Machine(base, *args, **kwargs)
        made.append(machine)
        return machine

    yield factory
    for machine in made:
        machine.vm.kill()


@pytest.mark.parametrize("mode", ["external", "internal"])
def test_revert_with_memory_brings_ram_and_disks_back(machines, mode):
    m = machines(mode=mode)
    m.write(0x11)
    m.mark_ram(b"snaptree-ram-A" * 8)
    snap = m.api().create("vm", "with-ram", memory=True)
    assert snap.memory.kind == ("file" if mode == "external" else "internal")
    m.write(0x22)
    m.mark_ram(b"snaptree-ram-B" * 8)
    old_pid = m.vm.pid
    with m.api() as api:
        api.revert("vm", "with-ram")
        assert api.current("vm").name == "with-ram"
    assert m.status() == "running"
    assert m.ram_mark(14 * 8) == b"snaptree-ram-A" * 8
    m.flush_and_check(0x11)
    if mode == "external":
        assert m.vm.pid != old_pid, "an external revert runs on a QEMU started anew"
    else:
        assert m.vm.pid == old_pid, "snapshot-load reverts inside the running QEMU"
    assert not os.path.exists(restart_marker(m.images[0]))


@pytest.mark.parametrize("mode", ["external", "internal"])
def test_disk_only_revert_boots_the_vm_again_on_the_old_disks(machines, mode):
    m = machines(mode=mode)
    m.write(0x31)
    with m.api() as api:
        api.create("vm", "one")
    m.write(0x32)
    with m.api() as api:
        api.create("vm", "two")
    m.write(0x33)
    m.mark_ram(b"boot-marker-1" * 4)
    old_pid = m.vm.pid
    with m.api() as api:
        api.revert("vm", "one")
    assert m.vm.pid != old_pid
    assert m.status() == "running"
    m.flush_and_check(0x31)
    # the other branch survives: going to "two" works the same way
    with m.api() as api:
        api.revert("vm", "two")
        assert [s.name for s in api.list("vm")] == ["one", "two"]
        assert api.check("vm").clean
    m.flush_and_check(0x32)
    assert not os.path.exists(restart_marker(m.images[0]))


def test_paused_vm_stays_paused_after_a_disk_only_revert(machines):
    m = machines(mode="external")
    m.write(0x41)
    m.api().create("vm", "one")
    m.write(0x42)
    with qmp.QMPSession(m.socket) as session:
        session.execute("stop")
    m.api().revert("vm", "one")
    assert m.status() in ("prelaunch", "paused")
    m.flush_and_check(0x41)


@pytest.mark.parametrize("mode", ["external", "internal"])
def test_without_a_recipe_the_revert_is_refused_and_nothing_changes(machines, mode):
    m = machines(mode=mode, recipe=False)
    m.write(0x51)
    with m.api() as api:
        api.create("vm", "ram", memory=(mode == "external"))
        m.write(0x52)
        pid = m.vm.pid
        with pytest.raises(NotSupported, match="qemu.launch"):
            api.revert("vm", "ram")
        assert api.journal("vm")[0]["operation"] == "create"  # nothing was journaled
    assert m.vm.pid == pid and m.status() == "running"
    assert m.reads(0x52)
    result = run_cli(["revert", "vm", "ram"], m.state)
    assert result.returncode == 7
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "qemu.launch" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", ["external", "internal"])
def test_memory_revert_starts_a_vm_that_is_not_running(machines, mode):
    m = machines(mode=mode)
    m.write(0x61)
    m.mark_ram(b"offline-start-A" * 4)
    m.api().create("vm", "ram", memory=True)
    m.write(0x62)
    m.mark_ram(b"offline-start-B" * 4)
    m.vm.kill()
    with m.api() as api:
        api.revert("vm", "ram")
    assert m.status() == "running"
    assert m.ram_mark(15 * 4) == b"offline-start-A" * 4
    m.flush_and_check(0x61)


def _recipe_with(m: Machine, change) -> None:
    with open(m.recipe, encoding="utf-8") as handle:
        doc = json.load(handle)
    change(doc["argv"])
    with open(m.recipe, "w", encoding="utf-8") as handle:
        json.dump(doc, handle)


@pytest.mark.parametrize("change, message", [
    (lambda argv: argv.extend(["-incoming", "defer"]), "-incoming"),
    (lambda argv: argv.extend(["-qmp", "unix:/tmp/other.qmp,server=on,wait=off"]), "-qmp"),
    (lambda argv: argv.extend(["-drive", "file={active:/not/a/disk.qcow2}"]), "no qcow2 volume"),
    (lambda argv: argv.__setitem__(slice(None), [a for a in argv if "disk1" not in a
                                                 and "file1" not in a]), "never opens"),
    (lambda argv: argv.append(""), "non-empty strings"),
])
def test_a_bad_recipe_is_refused_before_anything_changes(machines, change, message):
    m = machines(mode="external")
    m.write(0x71)
    m.api().create("vm", "one")
    m.write(0x72)
    _recipe_with(m, change)
    pid = m.vm.pid
    with pytest.raises(InvalidInput, match=message):
        m.api().revert("vm", "one")
    assert m.vm.pid == pid and m.status() == "running" and m.reads(0x72)


def test_a_recipe_that_is_not_json_or_missing(machines):
    m = machines(mode="external")
    m.api().create("vm", "one")
    with open(m.recipe, "w", encoding="utf-8") as handle:
        handle.write("argv: [qemu]")
    with pytest.raises(InvalidInput, match="not JSON"):
        m.api().revert("vm", "one")
    os.unlink(m.recipe)
    result = run_cli(["revert", "vm", "one"], m.state)
    assert result.returncode == 3 and "does not exist" in result.stderr
    assert m.status() == "running"


def test_a_recipe_qemu_rejects_fails_clearly_and_the_retry_brings_the_vm_back(machines):
    """QEMU refusing the recipe: a clear error, the VM down; fix the recipe, revert again."""
    m = machines(mode="external")
    m.write(0x81)
    m.api().create("vm", "one")
    m.write(0x82)
    with open(m.recipe, encoding="utf-8") as handle:
        good = handle.read()
    _recipe_with(m, lambda argv: argv.extend(["-device", "no-such-device"]))
    result = run_cli(["revert", "vm", "one"], m.state)
    assert result.returncode == 6, result.stderr
    assert "no-such-device" in result.stderr and "Traceback" not in result.stderr
    assert m.vm.pid is None, "QEMU could not start"
    with m.api() as api:  # the disks went back: the revert stays open, to roll forward
        assert api.journal("vm")[0]["status"] == "open"
    with open(m.recipe, "w", encoding="utf-8") as handle:
        handle.write(good)
    m.api().revert("vm", "one")
    assert m.status() == "running"
    m.flush_and_check(0x81)
    assert not os.path.exists(restart_marker(m.images[0]))


class ToolstackLauncher:
    """A toolstack that starts its VMs itself: it answers before the recipe does."""

    def __init__(self, recipe: str, images: list[str]):
        self.recipe, self.images = recipe, images
        self.calls: list[tuple[dict, bool]] = []

    @hookimpl
    def snaptree_vm_startable(self, group):
        return "by the test toolstack"

    @hookimpl
    def snaptree_vm_start(self, group, images, incoming, ctx):
        self.calls.append((dict(images), incoming))
        from snaptree.runner import CommandRunner
        from snaptree_qcow2 import launch
        recipe = launch.Recipe.load(self.recipe, self.images, group.qmp_socket)
        recipe.start(CommandRunner("toolstack"), group.qmp_socket, incoming=incoming,
                     images={k: v for k, v in images.items() if k in self.images})
        return True


def test_a_toolstack_plugin_starts_the_vm_in_place_of_the_recipe(machines):
    m = machines(mode="external", recipe=False)
    m.write(0x91)
    m.mark_ram(b"toolstack-A" * 4)
    m.api().create("vm", "ram", memory=True)
    m.write(0x92)
    m.mark_ram(b"toolstack-B" * 4)
    toolstack = ToolstackLauncher(m.recipe, m.images)
    with Snaptree(m.state, plugins=[toolstack]) as api:
        api.revert("vm", "ram")
    assert len(toolstack.calls) == 1
    images, incoming = toolstack.calls[0]
    assert incoming is True
    assert set(images) == set(m.images)
    assert all(images[i] == active_image(i) != i for i in m.images), "new overlays to run on"
    assert m.status() == "running"
    assert m.ram_mark(11 * 4) == b"toolstack-A" * 4
    m.flush_and_check(0x91)


def test_start_runs_the_vm_on_its_newest_overlays(machines):
    m = machines(mode="external")
    m.write(0xA1)
    m.api().create("vm", "one")
    m.write(0xA2)
    m.vm.kill()
    result = run_cli(["--json", "start", "vm"], m.state)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "running"
    assert data["images"] == {i: active_image(i) for i in m.images}
    assert all(active_image(i) != i for i in m.images)
    assert m.status() == "running"
    assert m.reads(0xA2), "the VM sees what was written after the snapshot"
    again = run_cli(["start", "vm"], m.state)
    assert again.returncode == 4 and "already answers" in again.stderr
    m.vm.kill()
    assert run_cli(["start", "vm", "--paused"], m.state).returncode == 0
    assert m.status() == "prelaunch"


def test_start_needs_a_way_to_start_the_vm(machines, tmp_path):
    m = machines(mode="external", recipe=False)
    m.vm.kill()
    result = run_cli(["start", "vm"], m.state)
    assert result.returncode == 7 and "qemu.launch" in result.stderr
    image = make_images(str(tmp_path), 1)[0]
    assert run_cli(["group", "create", "plain", f"qcow2:{image}"], m.state).returncode == 0
    result = run_cli(["start", "plain"], m.state)
    assert result.returncode == 2 and "no QMP socket" in result.stderr


def _branchy(m: Machine) -> None:
    """s1, s2, back to s1, s3, back to s2: s1's overlay now runs under the VM while its
    base also carries the branch of s3."""
    with m.api() as api:
        m.write(0xB1)
        api.create("vm", "s1")
        m.write(0xB2)
        api.create("vm", "s2")
        api.revert("vm", "s1")
        m.write(0xB3)
        api.create("vm", "s3")
        api.revert("vm", "s2")


def test_delete_a_shared_base_while_running_saves_and_restarts_the_vm(machines):
    m = machines(mode="external")
    _branchy(m)
    m.mark_ram(b"still-the-same-guest" * 4)
    pid = m.vm.pid
    with m.api() as api:
        assert api.delete("vm", "s1") == ["s1"]
        assert [s.name for s in api.list("vm")] == ["s2", "s3"]
        assert api.check("vm").clean
    assert m.vm.pid != pid, "a new QEMU took over"
    assert m.status() == "running"
    assert m.ram_mark(20 * 4) == b"still-the-same-guest" * 4, "the guest's memory carried over"
    m.flush_and_check(0xB2)
    assert not os.path.exists(restart_marker(m.images[0]))
    assert not [n for n in os.listdir(os.path.dirname(restart_marker(m.images[0])))
                if n.endswith(".memory")]
    with m.api() as api:
        api.revert("vm", "s3")
    m.flush_and_check(0xB3)


def test_delete_a_shared_base_without_a_recipe_is_refused_up_front(machines):
    m = machines(mode="external", recipe=False)
    # without a recipe the reverts of _branchy need QEMU down: do them offline
    with m.api() as api:
        m.write(0xC1)
        api.create("vm", "s1")
        m.write(0xC2)
        api.create("vm", "s2")
    m.vm.kill()
    with m.api() as api:
        api.revert("vm", "s1")
    m.vm = RecipeVM(m.recipe, m.images, m.socket)
    m.write(0xC3)
    with m.api() as api:
        api.create("vm", "s3")
    m.vm.kill()
    with m.api() as api:
        api.revert("vm", "s2")
    m.vm = RecipeVM(m.recipe, m.images, m.socket)
    pid = m.vm.pid
    result = run_cli(["delete", "vm", "s1"], m.state)
    assert result.returncode == 7, result.stderr
    assert "qemu.launch" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with m.api() as api:
        assert [(s.name, s.state.value) for s in api.list("vm")] == \
            [("s1", "complete"), ("s2", "complete"), ("s3", "complete")]
        assert api.check("vm").clean
    assert m.vm.pid == pid and m.status() == "running"
    m.flush_and_check(0xC2)


def test_killed_while_the_vm_is_down_recover_brings_it_back_with_its_memory(machines):
    m = machines(mode="external")
    _branchy(m)
    m.mark_ram(b"survives-a-kill" * 4)
    result = run_cli(["delete", "vm", "s1"], m.state, env={"SNAPTREE_KILL_AT_LABEL": "qcow2:vm-down"})
    assert result.returncode == -9, result.stderr
    assert m.vm.pid is None, "killed with QEMU down"
    recovered = run_cli(["--json", "recover"], m.state)
    assert recovered.returncode == 0, recovered.stderr
    actions = " ".join(json.loads(recovered.stdout)["actions"])
    assert "memory loaded back" in actions and "finished deleting" in actions
    assert m.status() == "running"
    assert m.ram_mark(15 * 4) == b"survives-a-kill" * 4
    m.flush_and_check(0xB2)
    with m.api() as api:
        assert [s.name for s in api.list("vm")] == ["s2", "s3"]
        assert api.check("vm").clean
    assert not os.path.exists(restart_marker(m.images[0]))


@pytest.mark.skipif(not kvm_usable(), reason="needs KVM: garbage in guest RAM stops a KVM guest "
                                              "with an internal error")
def test_a_guest_saved_crashed_comes_back_crashed_with_a_warning(machines):
    """QEMU refuses ``cont`` for a guest in internal-error; the revert still completes."""
    m = machines(mode="internal")
    m.write(0xD1)
    with open(m.ram, "r+b") as handle:
        handle.write(os.urandom(64 * MIB))  # the firmware's code too: the vCPU fails
    deadline = time.monotonic() + 30
    while m.status() != "internal-error" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.status() == "internal-error"
    with m.api() as api:
        api.create("vm", "crashed", memory=True)
    m.write(0xD2)
    result = run_cli(["revert", "vm", "crashed"], m.state)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "internal-error" in result.stderr and "reset" in result.stderr
    assert m.status() == "internal-error"
    with m.api() as api:
        assert api.current("vm").name == "crashed"
    m.flush_and_check(0xD1)


@pytest.mark.parametrize("mode", ["external", "internal"])
def test_disks_only_revert_of_a_memory_snapshot(machines, mode):
    """--disks-only: the disks go back, the memory stays out; a running VM boots afresh."""
    m = machines(mode=mode, recipe=False)
    m.write(0xE1)
    m.mark_ram(b"memory-left-out-A" * 4)
    m.api().create("vm", "ram", memory=True)
    m.write(0xE2)
    # no recipe, QEMU running: a disks-only revert needs QEMU restarted, so it is refused
    result = run_cli(["revert", "vm", "ram", "--disks-only"], m.state)
    assert result.returncode == 7 and "qemu.launch" in result.stderr
    assert "memory" not in result.stderr.split("needs it restarted")[1].split(";")[0]
    # offline, no recipe needed: only the disks go back, nobody starts a VM
    m.vm.kill()
    with pytest.raises(NotSupported, match="holds VM memory"):
        m.api().revert("vm", "ram")
    with m.api() as api:
        api.revert("vm", "ram", disks_only=True)
        assert api.current("vm").name == "ram"
    assert m.vm.pid is None
    for image in m.images:
        qemu_io(active_image(image), "read -P 0xe1 0 64k")


def test_disks_only_revert_with_a_recipe_boots_afresh(machines):
    m = machines(mode="external")
    m.write(0xE5)
    m.mark_ram(b"memory-left-out-B" * 4)
    m.api().create("vm", "ram", memory=True)
    m.write(0xE6)
    m.mark_ram(b"memory-of-now-XYZ" * 4)
    pid = m.vm.pid
    assert run_cli(["revert", "vm", "ram", "--disks-only"], m.state).returncode == 0
    assert m.vm.pid != pid and m.status() == "running"
    assert m.ram_mark(17 * 4) != b"memory-left-out-B" * 4, "the saved memory was left out"
    m.flush_and_check(0xE5)
