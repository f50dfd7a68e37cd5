"""A volume whose storage overlaps a registered volume's is refused at group
create and group add, in any group and both ways: the same file (also
through a symlink, a hard link or a bind mount), one inside the other's
tree, one inside the other's snapshot storage.  Real raw images, qcow2
images and btrfs subvolumes; snaptree_volume_footprint tells where each
volume lies."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from snaptree import BackendInfo, Capabilities, Snaptree, Volume, VolumeBackend, hookimpl
from snaptree.errors import Conflict, InvalidInput, PluginError
from snaptree.api import REGISTRY_LOCK
from snaptree.footprints import Places
from snaptree.locking import try_group_lock

from btrfs_fixtures import make_subvolume
from cli_helpers import st


def _image(path, size=1 << 20, byte=b"x"):
    with open(path, "wb") as f:
        f.write(byte * size)
    return str(path)


def _refused(capsys, state, *args, names=()):
    code, out, err = st(capsys, state, *args)
    assert code == 4, err
    assert err.count("\n") == 1 and "overlaps" in err, err
    for name in names:
        assert name in err, err
    return err


# -- the reviewer's cases --------------------------------------------------------


@pytest.mark.root
@pytest.mark.btrfs
def test_a_raw_image_inside_a_btrfs_volume_is_refused(capsys, tmp_path, btrfs_mount):
    vm3 = make_subvolume(os.path.join(btrfs_mount, "vm3"))
    disk = _image(os.path.join(vm3, "disk.img"))
    state = tmp_path / "state"
    # one group: a revert of the subvolume would swap away the raw snapshot folder
    _refused(capsys, state, "group", "create", "nest", f"btrfs:{vm3}", f"raw:{disk}",
             names=(f"raw:{disk}", f"btrfs:{vm3}", "'nest'"))
    # two groups, either one first
    assert st(capsys, state, "group", "create", "sub", f"btrfs:{vm3}")[0] == 0
    _refused(capsys, state, "group", "create", "img", f"raw:{disk}",
             names=(f"raw:{disk}", "'img'", f"btrfs:{vm3}", "'sub'"))
    assert st(capsys, state, "group", "delete", "sub")[0] == 0
    assert st(capsys, state, "group", "create", "img", f"raw:{disk}")[0] == 0
    _refused(capsys, state, "group", "create", "sub", f"btrfs:{vm3}",
             names=(f"btrfs:{vm3}", "'sub'", f"raw:{disk}", "'img'"))
    # group add too, into the same group or another
    other = _image(tmp_path / "other.img")
    assert st(capsys, state, "group", "create", "vm", f"raw:{other}")[0] == 0
    _refused(capsys, state, "group", "add", "vm", f"btrfs:{vm3}")
    _refused(capsys, state, "group", "add", "img", f"btrfs:{vm3}")
    with Snaptree(str(state)) as api:
        assert {g.name: [v.spec for v in g.volumes] for g in api.list_groups()} == {
            "img": [f"raw:{disk}"], "vm": [f"raw:{other}"]}


@pytest.mark.root
@pytest.mark.btrfs
def test_nested_subvolumes_and_btrfs_snapshots_are_refused(capsys, tmp_path, btrfs_mount):
    vm = make_subvolume(os.path.join(btrfs_mount, "vm"))
    inner = make_subvolume(os.path.join(btrfs_mount, "vm", "inner"))
    state = tmp_path / "state"
    assert st(capsys, state, "group", "create", "inner", f"btrfs:{inner}")[0] == 0
    _refused(capsys, state, "group", "create", "outer", f"btrfs:{vm}",
             names=(f"{inner} is inside {vm}",))
    subprocess.run(["btrfs", "subvolume", "delete", inner], check=True, capture_output=True)
    assert st(capsys, state, "group", "delete", "inner")[0] == 0
    assert st(capsys, state, "group", "create", "outer", f"btrfs:{vm}")[0] == 0
    with open(os.path.join(vm, "disk.img"), "wb") as f:
        f.write(b"d" * 4096)
    assert st(capsys, state, "create", "outer", "s1")[0] == 0
    (snapshot,) = os.listdir(os.path.join(btrfs_mount, ".vm.snaptree"))
    frozen = os.path.join(btrfs_mount, ".vm.snaptree", snapshot)
    # a raw image inside one of its snapshots, and a snapshot as a volume
    _refused(capsys, state, "group", "create", "x", f"raw:{frozen}/disk.img",
             names=(f"{btrfs_mount}/.vm.snaptree",))
    _refused(capsys, state, "group", "create", "y", f"btrfs:{frozen}")


@pytest.mark.qemu
def test_one_file_under_two_specs_is_refused(capsys, tmp_path):
    image = str(tmp_path / "d.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "16M"], check=True)
    hard, soft = str(tmp_path / "hard.qcow2"), str(tmp_path / "soft.qcow2")
    os.link(image, hard)
    os.symlink(image, soft)
    state = tmp_path / "state"
    assert st(capsys, state, "group", "create", "dq", f"qcow2:{image}")[0] == 0
    _refused(capsys, state, "group", "create", "dr", f"raw:{image}",
             names=(f"raw:{image}", "'dr'", f"qcow2:{image}", "'dq'"))
    _refused(capsys, state, "group", "create", "dh", f"qcow2:{hard}",
             names=(f"{hard} and {image} are the same file",))
    _refused(capsys, state, "group", "create", "dhr", f"raw:{hard}")
    # a symlink resolves to the same spec: already in a group
    code, _, err = st(capsys, state, "group", "create", "ds", f"qcow2:{soft}")
    assert code == 4 and "already belongs to group 'dq'" in err
    # two specs of one file in one new group
    other = str(tmp_path / "e.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", other, "16M"], check=True)
    _refused(capsys, state, "group", "create", "twice", f"qcow2:{other}", f"raw:{other}")
    with Snaptree(str(state)) as api:
        assert [g.name for g in api.list_groups()] == ["dq"]


def test_a_volume_in_another_volumes_snapshot_folder_is_refused(capsys, tmp_path):
    disk = _image(tmp_path / "disk.img")
    state = tmp_path / "state"
    assert st(capsys, state, "group", "create", "vm", f"raw:{disk}")[0] == 0
    assert st(capsys, state, "create", "vm", "s1")[0] == 0
    folder = tmp_path / ".disk.img.snaptree"
    (member,) = os.listdir(folder)
    _refused(capsys, state, "group", "create", "copy", f"raw:{folder / member}",
             names=(f"{folder / member} is inside {folder}",))
    # the other way: a volume registered there first keeps a new image out
    (tmp_path / ".new.img.snaptree").mkdir()
    stray = _image(tmp_path / ".new.img.snaptree" / "stray.img")
    assert st(capsys, state, "group", "create", "stray", f"raw:{stray}")[0] == 0
    new = _image(tmp_path / "new.img")
    _refused(capsys, state, "group", "create", "new", f"raw:{new}",
             names=(f"{stray} is inside {tmp_path / '.new.img.snaptree'}",))


@pytest.mark.root
def test_a_bind_mounted_path_is_the_same_file(capsys, tmp_path):
    real, bound = tmp_path / "real", tmp_path / "bound"
    real.mkdir()
    bound.mkdir()
    disk = _image(real / "disk.img")
    subprocess.run(["mount", "--bind", str(real), str(bound)], check=True)
    try:
        state = tmp_path / "state"
        assert st(capsys, state, "group", "create", "a", f"raw:{disk}")[0] == 0
        _refused(capsys, state, "group", "create", "b", f"raw:{bound / 'disk.img'}",
                 names=(f"{bound / 'disk.img'} and {disk} are the same file",))
    finally:
        subprocess.run(["umount", str(bound)], check=True)


@pytest.mark.root
@pytest.mark.btrfs
def test_a_volume_holding_the_state_through_a_bind_mount_is_refused(capsys, tmp_path,
                                                                    btrfs_mount):
    vm = make_subvolume(os.path.join(btrfs_mount, "vm"))
    bound = tmp_path / "bound"
    bound.mkdir()
    subprocess.run(["mount", "--bind", btrfs_mount, str(bound)], check=True)
    try:
        state = bound / "vm" / "state"  # inside the subvolume, spelt another way
        code, _, err = st(capsys, state, "group", "create", "g", f"btrfs:{vm}")
        assert code == 2 and "holds snaptree's own state" in err, err
    finally:
        subprocess.run(["umount", str(bound)], check=True)


def test_separate_images_in_one_folder_are_fine(tmp_path):
    disks = [_image(tmp_path / f"d{i}.img") for i in range(3)]
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("a", [f"raw:{disks[0]}", f"raw:{disks[1]}"])
        api.create("a", "s1")
        api.create_group("b", [f"raw:{disks[2]}"])  # its folder sits beside theirs
        api.create("b", "s1")
        assert [len(g.volumes) for g in api.list_groups()] == [2, 1]


# -- the footprint comparison -------------------------------------------------------


def test_places_tell_inside_from_beside(tmp_path):
    (tmp_path / "a").mkdir()
    places = Places()
    assert places.overlap([str(tmp_path / "a")], [str(tmp_path / "ab")]) is None
    assert places.overlap([str(tmp_path / "a" / "x")], [str(tmp_path / "a")]) \
        == f"{tmp_path / 'a' / 'x'} is inside {tmp_path / 'a'}"
    # paths that do not exist yet are known by the names below the nearest that does
    missing = tmp_path / "not" / "yet"
    assert places.overlap([str(missing)], [str(tmp_path / "not" / "yet" / "deeper")]) \
        == f"{missing / 'deeper'} is inside {missing}"
    assert places.overlap([str(missing)], [str(tmp_path / "not" / "yes")]) is None


# -- plugins: an answer is optional, a wrong one is a plugin error -----------------


class _Silent(VolumeBackend):
    """A backend that gives no footprint: compared by spec only."""

    info = BackendInfo("silent", "no footprint", Capabilities())

    def claim(self, locator):
        return Volume("silent", locator)


class _Sloppy(VolumeBackend):
    info = BackendInfo("sloppy", "a relative footprint", Capabilities())

    def claim(self, locator):
        return Volume("sloppy", locator)

    @hookimpl
    def snaptree_volume_footprint(self, backend, volume):
        return ["relative/path"] if backend == "sloppy" else None


class _Fussy(VolumeBackend):
    """Says where its volumes lie until told they are malformed."""

    info = BackendInfo("fussy", "a footprint that can fail", Capabilities())
    broken = False

    def claim(self, locator):
        return Volume("fussy", locator)

    def footprint(self, volume):
        if self.broken:
            raise InvalidInput(f"fussy: {volume.locator} is malformed")
        return [volume.locator]


def test_a_footprint_that_fails_names_the_volume_and_changes_nothing(tmp_path):
    fussy = _Fussy()
    disk = _image(tmp_path / "disk.img")
    with Snaptree(str(tmp_path / "state"), plugins=[fussy]) as api:
        api.create_group("f", [f"fussy:{tmp_path / 'tree'}"])
        fussy.broken = True
        with pytest.raises(InvalidInput, match=rf"^cannot tell where volume fussy:{tmp_path}/tree "
                                               r"\(group 'f'\) lies: fussy: .* is malformed$"):
            api.create_group("r", [f"raw:{disk}"])
        assert [g.name for g in api.list_groups()] == ["f"]


def test_a_backend_without_a_footprint_is_compared_by_spec(tmp_path):
    disk = _image(tmp_path / "disk.img")
    with Snaptree(str(tmp_path / "state"), plugins=[_Silent(), _Sloppy()]) as api:
        assert api.plugins.hook.snaptree_volume_footprint(
            backend="silent", volume=Volume("silent", disk)) is None
        api.create_group("s", [f"silent:{disk}"])
        api.create_group("r", [f"raw:{disk}"])  # nothing said where silent:... lies
        with pytest.raises(Conflict, match="already belongs to group 's'"):
            api.create_group("s2", [f"silent:{disk}"])
        with pytest.raises(PluginError, match="not a list of absolute paths"):
            api.create_group("bad", [f"sloppy:{disk}"])


# -- two callers at once -------------------------------------------------------------


class _Stall:
    """Holds the first footprint lookup made while the volume registry is
    locked (by the check) until released, to overlap two group creates."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.entered, self.release = threading.Event(), threading.Event()

    @hookimpl(wrapper=True)
    def snaptree_volume_footprint(self, backend, volume):
        with try_group_lock(self.state_dir, REGISTRY_LOCK) as free:
            pass
        if not free and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        return (yield)


def test_two_concurrent_creates_of_one_file_cannot_both_pass(tmp_path):
    disk = _image(tmp_path / "disk.img")
    hard = tmp_path / "hard.img"
    os.link(disk, hard)
    state = str(tmp_path / "state")
    stall = _Stall(state)
    outcomes: dict[str, object] = {}

    def create(name, spec, plugins):
        try:
            with Snaptree(state, plugins=plugins, lock_timeout=30) as api:
                api.create_group(name, [spec])
            outcomes[name] = "created"
        except Conflict as err:
            outcomes[name] = err

    first = threading.Thread(target=create, args=("first", f"raw:{disk}", [stall]))
    first.start()
    assert stall.entered.wait(30)  # the first is checking, not yet registered
    second = threading.Thread(target=create, args=("second", f"raw:{hard}", []))
    second.start()
    second.join(1.0)  # before the fix it passed the check here and registered
    stall.release.set()
    first.join(30)
    second.join(30)
    assert outcomes["first"] == "created"
    assert isinstance(outcomes["second"], Conflict), outcomes
    assert "are the same file" in str(outcomes["second"])
