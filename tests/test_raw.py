"""The raw backend: conformance kit on the copy path and the reflink path."""

from __future__ import annotations

import hashlib
import itertools
import os
import struct

import pytest

from snaptree.testing import BackendContract, VolumeHandle
from snaptree_raw.clone import clone_file

SIZE = 4 * 1024 * 1024


def _fill_image(path: str, seed: int) -> None:
    """Deterministic content with holes: data blocks at seed-dependent offsets."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.truncate(SIZE)
        for i in range(8):
            f.seek(((seed * 7 + i * 13) % 60) * 65536)
            f.write(hashlib.sha256(f"{seed}:{i}".encode()).digest() * 512)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def raw_factory(directory: str):
    counter = itertools.count()

    def factory() -> VolumeHandle:
        path = os.path.join(directory, f"disk{next(counter)}.img")
        with open(path, "wb") as f:
            f.truncate(SIZE)
        return VolumeHandle(spec=f"raw:{path}", fill=lambda seed: _fill_image(path, seed),
                            digest=lambda: _digest(path))

    return factory


class TestRawCopyPath(BackendContract):
    """On tmpfs there is no reflink: the sparse copy path runs."""

    @pytest.fixture
    def make_volume(self, tmp_path):
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
        work = os.path.join(directory, f"snaptree-raw-{os.getpid()}-{tmp_path.name}")
        os.makedirs(work)
        yield raw_factory(work)
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def test_copy_path_is_used_on_tmpfs_and_keeps_holes(tmp_path):
    src = "/dev/shm/snaptree-sparse-src"
    dst = "/dev/shm/snaptree-sparse-dst"
    try:
        with open(src, "wb") as f:
            f.truncate(64 * 1024 * 1024)
            f.seek(10 * 1024 * 1024)
            f.write(b"x" * 4096)
        seen = []
        method = clone_file(src, dst, progress=lambda d, t, label: seen.append((d, t)), label="t")
        assert method == "copy"
        assert _digest(src) == _digest(dst)
        assert os.stat(dst).st_size == 64 * 1024 * 1024
        assert os.stat(dst).st_blocks * 512 < 1024 * 1024, "holes must stay holes"
        assert seen and seen[-1] == (64 * 1024 * 1024, 64 * 1024 * 1024)
    finally:
        for p in (src, dst):
            if os.path.exists(p):
                os.unlink(p)


def test_revert_keeps_mode(tmp_path):
    from snaptree import Snaptree
    img = tmp_path / "d.img"
    img.write_bytes(b"a" * 8192)
    os.chmod(img, 0o640)
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("g", [f"raw:{img}"])
        api.create("g", "s")
        img.write_bytes(b"b" * 8192)
        api.revert("g", "s")
    assert img.read_bytes() == b"a" * 8192
    assert os.stat(img).st_mode & 0o777 == 0o640


def _acl(*entries):
    """A POSIX ACL as the kernel stores it in system.posix_acl_access."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident)
                                           for tag, perm, ident in entries)


@pytest.mark.root
def test_revert_keeps_owner_acl_and_labels(tmp_path):
    """A revert swaps in a new file: what the image file carried (a label a confined QEMU
    needs, an ACL, its owner) must come along, not just the mode."""
    from snaptree import Snaptree
    img = tmp_path / "d.img"
    img.write_bytes(b"a" * 8192)
    os.chown(img, 1234, 1234)
    acl = _acl((0x01, 6, 0xFFFFFFFF), (0x02, 4, 4321), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))
    try:
        os.setxattr(img, "system.posix_acl_access", acl)
    except OSError as err:
        pytest.skip(f"no POSIX ACLs on {tmp_path}: {err.strerror}")
    os.setxattr(img, "user.label", b"svirt_image_t:s0:c1,c2")
    os.setxattr(img, "trusted.snaptree-test", b"kept")
    before = {name: os.getxattr(img, name) for name in os.listxattr(img)}
    mode = os.stat(img).st_mode & 0o7777
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("g", [f"raw:{img}"])
        api.create("g", "s")
        img.write_bytes(b"b" * 8192)
        # the folder's default ACL would give a fresh file an ACL the image never had
        os.setxattr(tmp_path, "system.posix_acl_default",
                    _acl((0x01, 7, 0xFFFFFFFF), (0x02, 7, 999), (0x04, 5, 0xFFFFFFFF),
                         (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)))
        api.revert("g", "s")
    assert img.read_bytes() == b"a" * 8192
    assert {name: os.getxattr(img, name) for name in os.listxattr(img)} == before
    after = os.stat(img)
    assert (after.st_uid, after.st_gid, after.st_mode & 0o7777) == (1234, 1234, mode)



@pytest.mark.root
@pytest.mark.btrfs
class TestRawReflinkPath(BackendContract):
    """On btrfs the same contract holds with FICLONE reflinks."""

    @pytest.fixture
    def make_volume(self, btrfs_mount):
        return raw_factory(btrfs_mount)


@pytest.mark.root
@pytest.mark.btrfs
def test_reflink_is_used_on_btrfs_and_revert_is_exact(btrfs_mount, tmp_path):
    from snaptree import Snaptree
    img = os.path.join(btrfs_mount, "big.img")
    with open(img, "wb") as f:
        f.write(os.urandom(32 * 1024 * 1024))
    before = _digest(img)
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("g", [f"raw:{img}"])
        snap = api.create("g", "s")
        assert snap.members[0].data["method"] == "reflink"
        with open(img, "r+b") as f:
            f.seek(5 * 1024 * 1024)
            f.write(b"changed" * 1000)
        assert _digest(img) != before
        api.revert("g", "s")
        assert _digest(img) == before
        usage = api.space_used("g", "s")[f"raw:{img}"]
        assert usage.referenced_bytes >= 32 * 1024 * 1024


def test_longest_image_name_snapshots_and_reverts(tmp_path):
    from snaptree import Snaptree
    # 245 bytes: the most that leaves room for the ".NAME.snaptree" folder
    img = tmp_path / ("d" * 241 + ".img")
    img.write_bytes(b"a" * 8192)
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("g", [f"raw:{img}"])
        api.create("g", "s")
        img.write_bytes(b"b" * 8192)
        api.revert("g", "s")
        assert img.read_bytes() == b"a" * 8192
        assert sorted(os.listdir(tmp_path)) == [f".{img.name}.snaptree", img.name, "state"]


def test_recover_removes_revert_leftovers_of_both_namings(tmp_path):
    from snaptree import Snaptree
    from snaptree_raw.backend import _revert_temp
    img = tmp_path / "d.img"
    img.write_bytes(b"a" * 8192)
    leftovers = [tmp_path / ".d.img.snaptree-revert.partial", tmp_path / _revert_temp(str(img))]
    assert len(leftovers[1].name) == 41
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("g", [f"raw:{img}"])
        for leftover in leftovers:
            leftover.write_bytes(b"half")
        report = api.recover("g")
        assert sorted(report.actions) == sorted(f"g: raw:{img}: removed leftover {p}" for p in leftovers)
    assert sorted(os.listdir(tmp_path)) == ["d.img", "state"]
    assert img.read_bytes() == b"a" * 8192


@pytest.mark.parametrize("backend", ["raw", pytest.param("qcow2", marks=pytest.mark.qemu)])
def test_a_name_with_no_room_for_the_snapshot_folder_is_refused_at_group_create(
        tmp_path, backend):
    """'.NAME.snaptree' beside the image must fit 255 bytes: 245 works, 246 is
    refused when the group is made, not at its first snapshot."""
    import subprocess
    from snaptree import Snaptree
    from snaptree.errors import InvalidInput
    state = str(tmp_path / "state")
    paths = {}
    for size in (245, 246):
        path = paths[size] = str(tmp_path / ("é" * (size // 2) + "x" * (size % 2)))
        if backend == "raw":
            with open(path, "wb") as handle:
                handle.write(b"\0" * 4096)
        else:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1M"], check=True)
    with Snaptree(state) as api:
        with pytest.raises(InvalidInput, match="has 246 bytes.*at most 245 bytes"):
            api.create_group("long", [f"{backend}:{paths[246]}"])
        assert api.list_groups() == []
        api.create_group("fits", [f"{backend}:{paths[245]}"])
        api.create("fits", "s1")
        api.create("fits", "s2")
        api.revert("fits", "s1")
        api.delete("fits", "s2")
        assert api.check("fits").clean
