"""A third-party backend, written only against snaptree's public API.

It snapshots a directory by copying the tree to ``.<name>.dircopy/<id>``
beside it; revert copies back and swaps the trees with renames.  It stands
for an installable distribution (``snaptree-dircopy``) found through the
``snaptree`` entry-point group, exactly like the built-in backends.
"""

from __future__ import annotations

import os
import re
import shutil

from snaptree import BackendInfo, Capabilities, MemberSnapshot, Volume, VolumeBackend
from snaptree.errors import InvalidInput, VolumeNotFound
from snaptree.names import check_abs_path

_ID = re.compile(r"^[0-9a-f]{16}$")


def _store(path: str) -> str:
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.dircopy")


class DirCopyBackend(VolumeBackend):
    info = BackendInfo("dircopy", "directory trees, snapshotted by copying",
                       Capabilities(external=True, revert_to_any=True))

    def claim(self, locator):
        path = check_abs_path(locator, "directory")
        if not os.path.exists(path):
            raise VolumeNotFound(f"directory {path} does not exist")
        if not os.path.isdir(path):
            raise InvalidInput(f"{path} is not a directory")
        return Volume("dircopy", path)

    def snapshot(self, volumes, ctx):
        out = []
        for volume in volumes:
            target = os.path.join(_store(volume.locator), ctx.snapshot_id)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copytree(volume.locator, target + ".tmp", symlinks=True)
            os.rename(target + ".tmp", target)
            out.append(MemberSnapshot("dircopy", volume.locator, ctx.snapshot_id, target))
        return out

    def revert(self, members, ctx):
        for member in members:
            fresh = member.locator + ".dircopy-new"
            old = member.locator + ".dircopy-old"
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.copytree(member.ref, fresh, symlinks=True)
            os.rename(member.locator, old)
            os.rename(fresh, member.locator)
            shutil.rmtree(old)

    def delete(self, members, ctx):
        for member in members:
            shutil.rmtree(member.ref, ignore_errors=True)
            shutil.rmtree(member.ref + ".tmp", ignore_errors=True)

    def list(self, volume):
        store = _store(volume.locator)
        if not os.path.isdir(store):
            return []
        return [MemberSnapshot("dircopy", volume.locator, name, os.path.join(store, name))
                for name in sorted(os.listdir(store)) if _ID.match(name)]


plugin = DirCopyBackend()
