"""The raw backend: a raw image file snapshotted as a reflink or sparse copy.

Snapshots of ``/dir/disk.img`` live in ``/dir/.disk.img.snaptree/`` as
``<snapshot_id>.img``.  Revert clones the snapshot to a temporary file beside
the image and renames it over the image, so a crash leaves the old or the
new content, never a mix.  The image's mode and owner are kept.  The
temporary name, ``.snaptree-revert-<16 hex digits of the image name's
SHA-256>.partial``, is 41 bytes whatever the image's name, so a revert fits
wherever the image does.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat

from snaptree import BackendInfo, Capabilities, MemberSnapshot, SpaceUsage, Volume, VolumeBackend
from snaptree.errors import InvalidInput, NotFound, VolumeNotFound
from snaptree.names import beside, check_abs_path, check_room_beside, entries_beside, remove_if_empty

from .clone import carry_attributes, clone_file, fsync_dir, map_oserror

__all__ = ["RawBackend", "snapshot_dir"]

_MEMBER_FILE = re.compile(r"^([0-9a-f]{16})\.img$")
PARTIAL = ".partial"


def snapshot_dir(image: str) -> str:
    return beside(image, ".snaptree")


def _revert_temp(image: str) -> str:
    directory, base = os.path.split(image)
    digest = hashlib.sha256(os.fsencode(base)).hexdigest()[:16]
    return os.path.join(directory, f".snaptree-revert-{digest}{PARTIAL}")


def _old_revert_temp(image: str) -> str:
    # the name earlier versions cloned to; recover still removes what is there
    return beside(image, f".snaptree-revert{PARTIAL}")


class RawBackend(VolumeBackend):
    info = BackendInfo(
        name="raw",
        description="raw image files; reflink clone (btrfs, xfs) or sparse copy",
        capabilities=Capabilities(live=False, internal=False, external=True, read_only=False,
                                  revert_to_any=True, atomic_batch=False, memory_state=False),
    )

    def claim(self, locator: str) -> Volume:
        path = check_abs_path(locator, "raw image path")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise VolumeNotFound(f"raw image {path} does not exist") from None
        except OSError as err:
            raise map_oserror(err, f"checking {path}") from err
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"raw image {path} is not a regular file")
        check_room_beside(path, [snapshot_dir(path), _revert_temp(path)], "raw")
        return Volume("raw", path)

    def footprint(self, volume):
        return [volume.locator, snapshot_dir(volume.locator), _revert_temp(volume.locator),
                _old_revert_temp(volume.locator)]

    def prepare(self, operation, volumes, ctx):
        for volume in volumes:
            self.claim(volume.locator)
            if operation == "snapshot":
                directory = os.path.dirname(volume.locator)
                if not os.access(directory, os.W_OK):
                    raise InvalidInput(f"raw: cannot write snapshots beside {volume.locator}")
        if operation == "revert":
            for member in ctx.scratch.get("members", []):
                if not os.path.isfile(member.ref):
                    raise NotFound(f"raw: snapshot file {member.ref} is missing; cannot revert")

    def snapshot(self, volumes, ctx):
        members = []
        for volume in volumes:
            folder = snapshot_dir(volume.locator)
            target = os.path.join(folder, f"{ctx.snapshot_id}.img")
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                method = clone_file(volume.locator, target + PARTIAL, progress=ctx.progress,
                                    label=f"snapshot {os.path.basename(volume.locator)}")
                os.rename(target + PARTIAL, target)
                fsync_dir(folder)
                size = os.stat(target).st_size
            except OSError as err:
                raise map_oserror(err, f"snapshotting {volume.locator}") from err
            members.append(MemberSnapshot(backend="raw", locator=volume.locator,
                                          snapshot_id=ctx.snapshot_id, ref=target,
                                          size_bytes=size, data={"method": method}))
        return members

    def revert(self, members, ctx):
        for member in members:
            image = member.locator
            temp = _revert_temp(image)
            try:
                if os.path.exists(temp):
                    os.unlink(temp)
                old = os.stat(image)
                clone_file(member.ref, temp, progress=ctx.progress,
                           label=f"revert {os.path.basename(image)}")
                carry_attributes(image, old, temp)
                os.replace(temp, image)
                fsync_dir(os.path.dirname(image))
            except FileNotFoundError as err:
                raise VolumeNotFound(f"raw: snapshot file {member.ref} is missing") from err
            except OSError as err:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
                raise map_oserror(err, f"reverting {image}") from err

    def delete(self, members, ctx):
        for member in members:
            for path in (member.ref, member.ref + PARTIAL):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise map_oserror(err, f"deleting {path}") from err
            remove_if_empty(os.path.dirname(member.ref))

    def list(self, volume):
        folder = snapshot_dir(volume.locator)
        try:
            entries = entries_beside(folder, _MEMBER_FILE)
            return [MemberSnapshot(backend="raw", locator=volume.locator, snapshot_id=match[1],
                                   ref=path, size_bytes=os.stat(path).st_size)
                    for path, match in entries]
        except OSError as err:
            raise map_oserror(err, f"listing {folder}") from err

    def space_used(self, member):
        try:
            st = os.stat(member.ref)
        except OSError:
            return SpaceUsage()
        allocated = st.st_blocks * 512
        if member.data.get("method") == "reflink":
            # shared extents: the file references this much, exclusive is unknown
            return SpaceUsage(exclusive_bytes=None, referenced_bytes=allocated)
        return SpaceUsage(exclusive_bytes=allocated, referenced_bytes=allocated)

    def recover_volume(self, volume):
        done = []
        candidates = [_revert_temp(volume.locator), _old_revert_temp(volume.locator)]
        folder = snapshot_dir(volume.locator)
        if os.path.isdir(folder):
            candidates += [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(PARTIAL)]
        for path in candidates:
            if os.path.exists(path):
                os.unlink(path)
                done.append(f"removed leftover {path}")
        return done
