"""The btrfs backend: a subvolume snapshotted read-only by the kernel.

Snapshots of the subvolume ``/pool/vm1`` live in the plain directory
``/pool/.vm1.snaptree/`` as read-only subvolumes named by snapshot id.
Revert makes a snapshot of the chosen one beside the volume, as
``/pool/.snaptree-revert-<16 hex digits of the volume name's SHA-256>``
(read-only exactly when the volume is), and swaps it with ``/pool/vm1`` in
one ``renameat2(RENAME_EXCHANGE)``, so a crash leaves the old or the new tree
at ``/pool/vm1``, never a mix; the replaced tree, now under the temporary
name, is then destroyed.  The temporary name is 33 bytes whatever the
volume's name, so a revert fits wherever the volume does; it sits in the
volume's own directory because btrfs refuses to move a read-only subvolume
to another directory.  A volume whose name (in bytes) leaves no room for
the folder's name within btrfs's 255 is refused when it is claimed into a
group (:data:`MAX_VOLUME_NAME`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re

from snaptree import BackendInfo, Capabilities, MemberSnapshot, SpaceUsage, Volume, VolumeBackend
from snaptree import faults
from snaptree.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    NotSupported,
    PermissionDenied,
    SnaptreeError,
    VolumeNotFound,
)
from snaptree.names import NAME_MAX, beside, check_abs_path, check_room_beside, entries_beside, remove_if_empty

from . import ioctl
from .ioctl import map_oserror

__all__ = ["BtrfsBackend", "snapshot_dir", "revert_temp", "NAME_MAX", "MAX_VOLUME_NAME"]

log = logging.getLogger("snaptree.btrfs")

_MEMBER_NAME = re.compile(r"^[0-9a-f]{16}$")

_FOLDER_SUFFIX = ".snaptree"
#: The longest volume name, in bytes, whose snapshot folder ``.NAME.snaptree``
#: fits ``NAME_MAX`` (the revert temporary has a fixed length, well below it).
MAX_VOLUME_NAME = NAME_MAX - len(".") - len(_FOLDER_SUFFIX)


def snapshot_dir(subvolume: str) -> str:
    """The directory holding the snapshots of ``subvolume``."""
    return beside(subvolume, _FOLDER_SUFFIX)


def revert_temp(subvolume: str) -> str:
    """The temporary subvolume a revert swaps in (and the replaced tree after)."""
    parent, base = os.path.split(subvolume)
    digest = hashlib.sha256(os.fsencode(base)).hexdigest()[:16]
    return os.path.join(parent, f".snaptree-revert-{digest}")


def _old_revert_temp(subvolume: str) -> str:
    # the name earlier versions used; recover still removes what is there
    return beside(subvolume, ".snaptree-revert")


def _mount_points() -> set[str]:
    points = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            field = line.split(" ")[4]
            # mountinfo escapes space, tab, newline and backslash as octal
            points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field))
    return points


class _Dir:
    """An open directory file descriptor, closed on exit."""

    def __init__(self, path: str):
        self.fd = ioctl.open_dir(path)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


class BtrfsBackend(VolumeBackend):
    """Snapshots of btrfs subvolumes through the kernel's subvolume ioctls."""

    info = BackendInfo(
        name="btrfs",
        description="btrfs subvolumes; read-only snapshots via the subvolume ioctls",
        # Creating a snapshot works unprivileged, but destroying one needs
        # CAP_SYS_ADMIN (unless mounted user_subvol_rm_allowed), and so do
        # revert's cleanup and the quota tree search behind space_used.
        capabilities=Capabilities(live=False, internal=False, external=True, read_only=True,
                                  revert_to_any=True, atomic_batch=False, memory_state=False,
                                  needs_root=True),
    )

    # -- claiming and checks -----------------------------------------------------

    def claim(self, locator: str) -> Volume:
        path = self._subvolume(locator)
        self._check_room(path)
        return Volume("btrfs", path)

    def _check_room(self, path: str) -> None:
        """Refuse a volume whose name leaves no room for the names snaptree
        makes beside it.  Checked when a volume is claimed into a group only:
        operations on a volume already in one skip it, so a group an older,
        laxer check let in keeps working as far as btrfs allows."""
        check_room_beside(path, [snapshot_dir(path), revert_temp(path)], "btrfs")

    def _subvolume(self, locator: str) -> str:
        """The normalised path of the subvolume ``locator``; raise if it cannot be a volume."""
        path = check_abs_path(locator, "btrfs subvolume path")
        try:
            st = os.stat(path)
            magic = ioctl.fs_type(path)
        except FileNotFoundError:
            raise VolumeNotFound(f"btrfs: {path} does not exist") from None
        except OSError as err:
            raise map_oserror(err, f"checking {path}") from err
        if magic != ioctl.BTRFS_SUPER_MAGIC:
            raise InvalidInput(f"btrfs: {path} is not on a btrfs filesystem")
        if not ioctl.is_subvolume(st):
            raise InvalidInput(f"btrfs: {path} is not a btrfs subvolume "
                               "(make one with 'btrfs subvolume create')")
        if path == "/" or path in _mount_points():
            raise InvalidInput(f"btrfs: {path} is a mount point; revert swaps the subvolume "
                               "by renaming it, so give a subvolume inside a mounted btrfs")
        return path

    def footprint(self, volume):
        # the subvolume's whole tree: a file in it is lost with its revert
        return [volume.locator, snapshot_dir(volume.locator), revert_temp(volume.locator),
                _old_revert_temp(volume.locator)]

    def prepare(self, operation, volumes, ctx):
        for volume in volumes:
            self._subvolume(volume.locator)  # not claim(): its name rule is for new volumes
            if os.statvfs(volume.locator).f_flag & os.ST_RDONLY:
                raise PermissionDenied(f"btrfs: {volume.locator} is on a read-only filesystem")
            if operation == "snapshot":
                target = os.path.join(snapshot_dir(volume.locator), ctx.snapshot_id)
                if os.path.lexists(target):
                    raise Conflict(f"btrfs: snapshot {target} already exists")
            if operation in ("snapshot", "revert"):
                self._refuse_nested(volume.locator)
        if operation == "revert":
            for member in ctx.scratch.get("members", []):
                self._check_member_path(member)
                try:
                    st = os.stat(member.ref)
                except FileNotFoundError:
                    raise NotFound(f"btrfs: snapshot {member.ref} is missing; cannot revert") from None
                if not ioctl.is_subvolume(st):
                    raise NotFound(f"btrfs: {member.ref} is not a snapshot subvolume; cannot revert")
                self._refuse_default(member.locator)

    def _check_member_path(self, member: MemberSnapshot) -> None:
        # A catalog entry must never make us destroy a subvolume elsewhere.
        expected = os.path.join(snapshot_dir(member.locator), member.snapshot_id)
        if member.ref != expected or not _MEMBER_NAME.match(member.snapshot_id):
            raise InvalidInput(f"btrfs: member {member.ref!r} is not where snaptree keeps "
                               f"snapshots of {member.locator}")

    def _refuse_nested(self, subvolume: str) -> None:
        try:
            with _Dir(subvolume) as fd:
                nested = ioctl.child_subvolumes(fd)
        except OSError as err:
            raise map_oserror(err, f"inspecting {subvolume}") from err
        if nested:
            raise NotSupported(f"btrfs: {subvolume} contains {len(nested)} nested subvolume(s); "
                               "a snapshot does not hold them, so a revert would lose them")

    def _refuse_default(self, subvolume: str) -> None:
        # btrfs will not destroy the default subvolume, so the tree a revert
        # replaces could not be removed once the new one had been swapped in
        try:
            default = _is_default(subvolume)
        except OSError as err:
            raise map_oserror(err, f"reading the default subvolume of {subvolume}") from err
        if default:
            raise NotSupported(
                f"btrfs: {subvolume} is the filesystem's default subvolume, which btrfs cannot "
                "delete, so a revert could not remove the replaced tree; make another subvolume "
                "the default ('btrfs subvolume set-default') first")

    # -- the operations ---------------------------------------------------------

    def snapshot(self, volumes, ctx):
        members: list[MemberSnapshot] = []
        try:
            for volume in volumes:
                members.append(self._snapshot_one(volume, ctx.snapshot_id))
                ctx.progress(len(members), len(volumes), f"snapshot {volume.locator}")
        except BaseException:
            self.delete(members, ctx)
            raise
        return members

    def _snapshot_one(self, volume: Volume, snapshot_id: str) -> MemberSnapshot:
        folder = snapshot_dir(volume.locator)
        target = os.path.join(folder, snapshot_id)
        try:
            try:
                os.mkdir(folder, 0o700)  # one system call; the parent is the volume's own
            except FileExistsError:
                pass
            with _Dir(volume.locator) as source, _Dir(folder) as dest:
                ioctl.create_snapshot(source, dest, snapshot_id, readonly=True)
        except OSError as err:
            raise map_oserror(err, f"snapshotting {volume.locator} to {target}") from err
        return MemberSnapshot(backend="btrfs", locator=volume.locator,
                              snapshot_id=snapshot_id, ref=target)

    def revert(self, members, ctx):
        for member in members:
            self._check_member_path(member)
            self._revert_one(member)
            ctx.progress(1, 1, f"revert {member.locator}")

    def _revert_one(self, member: MemberSnapshot) -> None:
        subvolume = member.locator
        parent, base = os.path.split(subvolume)
        temp = os.path.basename(revert_temp(subvolume))
        try:
            try:
                source = _Dir(member.ref)
            except FileNotFoundError:
                raise VolumeNotFound(f"btrfs: snapshot {member.ref} is missing") from None
            with source as source_fd, _Dir(parent) as parent_fd, _Dir(subvolume) as volume_fd:
                readonly = ioctl.get_readonly(volume_fd)
                if os.path.lexists(os.path.join(parent, temp)):
                    ioctl.destroy_subvolume(parent_fd, temp)
                # made read-only at birth, so the volume's flag holds from the swap on
                ioctl.create_snapshot(source_fd, parent_fd, temp, readonly=readonly)
                faults.checkpoint("btrfs:revert:made")
                ioctl.rename_exchange(parent_fd, temp, base)
                os.fsync(parent_fd)
                faults.checkpoint("btrfs:revert:swapped")
                # The old tree now sits under the temporary name.
                ioctl.destroy_subvolume(parent_fd, temp)
                os.fsync(parent_fd)
        except SnaptreeError:
            raise
        except OSError as err:
            raise map_oserror(err, f"reverting {subvolume} to {member.ref}") from err

    def delete(self, members, ctx):
        for member in members:
            self._check_member_path(member)
            folder, name = os.path.split(member.ref)
            try:
                with _Dir(folder) as folder_fd:
                    if os.path.lexists(member.ref):
                        ioctl.destroy_subvolume(folder_fd, name)
                        os.fsync(folder_fd)
            except FileNotFoundError:
                pass  # already gone: deletes are retried after a crash
            except OSError as err:
                raise map_oserror(err, f"deleting snapshot {member.ref}") from err
            remove_if_empty(folder)  # unless other snapshots remain

    def list(self, volume):
        folder = snapshot_dir(volume.locator)
        try:
            entries = entries_beside(folder, _MEMBER_NAME)
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:
                return []  # no such folder can exist (a name an older claim let in)
            raise map_oserror(err, f"listing {folder}") from err
        found = []
        for path, _ in entries:
            name = os.path.basename(path)
            try:
                if not ioctl.is_subvolume(os.lstat(path)):
                    continue
            except FileNotFoundError:
                continue
            found.append(MemberSnapshot(backend="btrfs", locator=volume.locator,
                                        snapshot_id=name, ref=path))
        return found

    def space_used(self, member):
        try:
            with _Dir(member.ref) as fd:
                # qgroup numbers are brought up to date at transaction commit
                ioctl.syncfs(fd)
                usage = ioctl.qgroup_usage(fd, ioctl.subvolume_id(fd))
        except OSError as err:
            log.debug("btrfs: no space figures for %s: %s", member.ref, err)
            return SpaceUsage()
        if usage is None:
            return SpaceUsage()
        exclusive, referenced = usage
        return SpaceUsage(exclusive_bytes=exclusive, referenced_bytes=referenced)

    def recover_volume(self, volume):
        done = []
        for temp in (revert_temp(volume.locator), _old_revert_temp(volume.locator)):
            try:
                if not ioctl.is_subvolume(os.lstat(temp)):
                    continue  # not ours: snaptree only ever puts a subvolume there
            except OSError:
                continue  # nothing there (or a name too long to exist)
            parent, name = os.path.split(temp)
            try:
                if _is_default(temp):
                    # left by a revert from before the default was refused; removing
                    # it needs the default moved, and that choice is the owner's
                    done.append(f"left the temporary subvolume {temp} of an interrupted "
                                "revert: it is the filesystem's default subvolume; make "
                                "another the default ('btrfs subvolume set-default') and "
                                "run 'snaptree recover' again")
                    continue
                with _Dir(parent) as parent_fd:
                    ioctl.destroy_subvolume(parent_fd, name)
                    os.fsync(parent_fd)
            except OSError as err:
                raise map_oserror(err, f"removing the half-done revert {temp}") from err
            done.append(f"removed the temporary subvolume {temp} of an interrupted revert")
        return done


def _is_default(path: str) -> bool:
    """True when the subvolume at ``path`` is its filesystem's default subvolume."""
    with _Dir(path) as fd:
        return ioctl.subvolume_id(fd) == ioctl.default_subvolume(fd)
