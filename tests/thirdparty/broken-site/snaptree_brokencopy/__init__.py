"""Image files snapshotted with ``cp``: one sound backend and broken variants.

snaptree's own tests run the conformance kit against each of them
(``tests/test_kit_catches.py``): the sound one must pass it, every broken one
must fail it.  Each variant breaks one rule a plugin author might miss:

- ``copyfirst`` (atomic) reverts only the first member of a batch;
- ``copymove`` (reverts only to the newest) moves the snapshot into place,
  consuming it;
- ``copyclaim`` claims its volumes as the built-in ``raw`` backend's;
- ``copyleave`` (atomic) raises partway through a batch and leaves the
  copies it made;
- ``copygone`` raises when asked to delete a member already gone.

Every copy goes through a :class:`snaptree.runner.CommandRunner`, so the
kit can make the N-th ``cp`` fail (``SNAPTREE_FAIL_COMMAND``).
"""

from __future__ import annotations

import os
import re

from snaptree import BackendInfo, Capabilities, MemberSnapshot, Volume, VolumeBackend
from snaptree.errors import InvalidInput, VolumeNotFound
from snaptree.names import check_abs_path
from snaptree.runner import CommandRunner

_ID = re.compile(r"^[0-9a-f]{16}$")


class CopyBackend(VolumeBackend):
    """A regular file per volume, copied to ``.NAME.BACKEND/<id>`` beside it."""

    def __init__(self, name: str, *, atomic: bool = False, revert_to_any: bool = True,
                 bug: str | None = None):
        self.info = BackendInfo(name, f"image files copied with cp ({bug or 'sound'})",
                                Capabilities(external=True, revert_to_any=revert_to_any,
                                             atomic_batch=atomic),
                                required_tools=("cp",))
        self.bug = bug
        self.runner = CommandRunner(name)

    def _store(self, locator: str) -> str:
        folder, name = os.path.split(locator)
        return os.path.join(folder, f".{name}.{self.info.name}")

    def _copy(self, source: str, target: str) -> None:
        self.runner.run(["cp", "--reflink=auto", "--sparse=always", source, target])

    def claim(self, locator):
        path = check_abs_path(locator, "image")
        if not os.path.exists(path):
            raise VolumeNotFound(f"image {path} does not exist")
        if not os.path.isfile(path):
            raise InvalidInput(f"{path} is not a regular file")
        return Volume("raw" if self.bug == "claim-raw" else self.info.name, path)

    def prepare(self, operation, volumes, ctx):
        self.runner.which("cp")

    def snapshot(self, volumes, ctx):
        made: list[str] = []
        try:
            for volume in volumes:
                target = os.path.join(self._store(volume.locator), ctx.snapshot_id)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                self._copy(volume.locator, target + ".tmp")
                os.rename(target + ".tmp", target)
                made.append(target)
        except BaseException:
            if self.bug != "leave":
                for target in made:
                    os.unlink(target)
            raise
        return [MemberSnapshot(self.info.name, v.locator, ctx.snapshot_id, target)
                for v, target in zip(volumes, made)]

    def revert(self, members, ctx):
        for member in members[:1] if self.bug == "first-only" else members:
            if self.bug == "move":
                os.replace(member.ref, member.locator)
                continue
            fresh = member.locator + f".{self.info.name}-revert"
            self._copy(member.ref, fresh)
            os.replace(fresh, member.locator)

    def delete(self, members, ctx):
        for member in members:
            if self.bug == "gone-fails":
                os.unlink(member.ref)
                continue
            for path in (member.ref, member.ref + ".tmp"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def list(self, volume):
        store = self._store(volume.locator)
        if not os.path.isdir(store):
            return []
        return [MemberSnapshot(self.info.name, volume.locator, name, os.path.join(store, name))
                for name in sorted(os.listdir(store)) if _ID.match(name)]

    def footprint(self, volume):
        return [volume.locator, self._store(volume.locator),
                volume.locator + f".{self.info.name}-revert"]


sound = CopyBackend("copyok", atomic=True)
reverts_first_only = CopyBackend("copyfirst", atomic=True, bug="first-only")
revert_moves_snapshot = CopyBackend("copymove", revert_to_any=False, bug="move")
claims_for_raw = CopyBackend("copyclaim", bug="claim-raw")
leaves_storage = CopyBackend("copyleave", atomic=True, bug="leave")
delete_fails_when_gone = CopyBackend("copygone", bug="gone-fails")
