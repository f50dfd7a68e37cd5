"""The conformance kit: the contract every snaptree backend must meet.

A backend's test module subclasses :class:`BackendContract` and supplies a
``make_volume`` fixture returning a factory of fresh, real volumes::

    from snaptree.testing import BackendContract, VolumeHandle

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def make_volume(self, tmp_path):
            def factory():
                path = tmp_path / f"vol{next(counter)}"
                ...create it...
                return VolumeHandle(spec=f"mine:{path}", fill=..., digest=...)
            return factory

Load the kit's fixtures with ``pytest_plugins = ["snaptree.testing"]`` in a
``conftest.py``.  Every test uses the real :class:`snaptree.Snaptree` API with
entry-point plugins, so the backend is found exactly as users find it.  The
failure half (:mod:`snaptree.testing_faults`) fails, kills and interrupts
operations through snaptree's fault-injection points, and makes the
backend's own commands fail one at a time (``command_faults`` of them at
most, a class attribute a subclass may lower).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable

import attrs
import pytest

from . import Snaptree
from .errors import Conflict, InvalidInput, NotFound, SnapshotNotFound
from .footprints import Places
from .testing_faults import FaultContract

__all__ = ["BackendContract", "VolumeHandle", "INVALID_NAMES", "run_cli", "forget_unsynced_creates"]


@attrs.define
class VolumeHandle:
    """A fresh volume supplied by a backend's test fixture."""

    #: ``BACKEND:LOCATOR``
    spec: str
    #: ``fill(seed)`` overwrites the volume's content, deterministically from ``seed``.
    fill: Callable[[int], None]
    #: ``digest()`` returns a hash of the volume's whole content.
    digest: Callable[[], str]
    #: group options to use (e.g. ``{"qcow2.mode": "external"}``)
    group_options: dict[str, Any] = attrs.field(factory=dict)
    #: QMP socket of a QEMU owning the volume, for live backends
    qmp_socket: str | None = None

    @property
    def backend(self) -> str:
        return self.spec.split(":", 1)[0]


#: Names every backend must refuse, before touching storage.
INVALID_NAMES = ["", "a/b", "-rf", ".hidden", "x" * 65, "nul\x00byte", "tab\tname",
                 "new\nline", " lead", "trail ", "..", "esc\x1b[0m"]


def run_cli(args: list[str], state_dir: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m snaptree`` in a child process on ``state_dir``."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    child_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "snaptree", "--state-dir", state_dir, *args],
                          capture_output=True, text=True, env=child_env, timeout=timeout)


@pytest.fixture
def snaptree_state_dir(tmp_path):
    return str(tmp_path / "snaptree-state")


def forget_unsynced_creates(api: Snaptree, group: str) -> None:
    """Drop the open journal entries of creates and their pending rows: what
    the catalog holds after a power cut erased a create's unsynced journal
    entry (fault injection for the kit and snaptree's own tests)."""
    catalog = api.catalog
    with catalog.write("test-power-cut") as db:
        for entry in catalog.journal_open(group):
            if entry["operation"] == "create":
                db.execute("DELETE FROM members WHERE snapshot_id=?", (entry["snapshot_id"],))
                db.execute("DELETE FROM snapshots WHERE snapshot_id=?", (entry["snapshot_id"],))
                db.execute("DELETE FROM journal WHERE op_id=?", (entry["op_id"],))


def _findings(report) -> str:
    found = {k: v for k, v in report.as_dict().items()
             if v and k not in ("group", "clean", "foreign")}
    return "; ".join(f"{kind}: {items}" for kind, items in found.items())


class BackendContract(FaultContract):
    """Contract tests; subclass and provide a ``make_volume`` fixture.

    The failure, crash and interrupt tests come from
    :class:`snaptree.testing_faults.FaultContract`.
    """

    group = "contract"

    @pytest.fixture
    def make_volume(self):  # pragma: no cover - must be overridden
        pytest.fail("a BackendContract subclass must define the make_volume fixture")

    @pytest.fixture
    def api(self, snaptree_state_dir, make_volume):
        # depends on make_volume so a backend's setup (sys.path, mounts) comes first
        with Snaptree(snaptree_state_dir) as api:
            yield api

    def _group(self, api: Snaptree, volumes: list[VolumeHandle], name: str | None = None) -> str:
        name = name or self.group
        options: dict[str, Any] = {}
        for v in volumes:
            options.update(v.group_options)
        sockets = {v.qmp_socket for v in volumes if v.qmp_socket}
        api.create_group(name, [v.spec for v in volumes], qmp_socket=next(iter(sockets), None),
                         options=options)
        return name

    def _claim(self, api: Snaptree, vol: VolumeHandle):
        volume = api.claim(vol.spec)
        assert volume.backend == vol.backend, (
            f"{vol.spec} was claimed as a volume of backend {volume.backend!r}: a plugin claims "
            f"only its own backend's specs, as Volume({vol.backend!r}, ...); snaptree would send "
            f"every operation on it to {volume.backend!r}")
        return volume

    def _caps(self, api: Snaptree, vol: VolumeHandle):
        return api.backend_info(vol.backend).capabilities

    def _stored(self, api: Snaptree, vol: VolumeHandle):
        volume = self._claim(api, vol)
        listed = api.plugins.hook.snaptree_list(backend=volume.backend, volume=volume)
        return [m for m in (listed or []) if m.snapshot_id]

    def _ids(self, api: Snaptree, vol: VolumeHandle) -> list[str]:
        return sorted(m.snapshot_id for m in self._stored(api, vol))

    def _assert_clean(self, api: Snaptree, group: str, after: str) -> None:
        report = api.check(group)
        assert report.clean, f"'snaptree check' finds drift after {after}: {_findings(report)}"

    def _assert_holds(self, vols: list[VolumeHandle], digests: list[str], what: str) -> None:
        for index, (vol, digest) in enumerate(zip(vols, digests), 1):
            assert vol.digest() == digest, \
                f"volume {index} of {len(vols)} ({vol.spec}) does not hold {what}"

    def _assert_members(self, api: Snaptree, snap, vols: list[VolumeHandle]) -> None:
        assert len(snap.members) == len(vols)
        for index, (vol, member) in enumerate(zip(vols, snap.members), 1):
            volume = self._claim(api, vol)
            assert (member.backend, member.locator, member.snapshot_id) == \
                (volume.backend, volume.locator, snap.snapshot_id), (
                f"the member of volume {index} of {len(vols)} ({vol.spec}) says backend "
                f"{member.backend!r}, locator {member.locator!r}, id {member.snapshot_id!r}: "
                "snaptree_snapshot returns one member per volume, in order, each with that "
                "volume's backend and locator and ctx.snapshot_id")

    # -- the lifecycle ----------------------------------------------------------

    def test_backend_is_registered(self, api, make_volume):
        vol = make_volume()
        info = api.backend_info(vol.backend)
        assert info.name == vol.backend
        assert info.provider, "the manager records which plugin provides a backend"

    def test_volume_path_is_what_a_vm_opens(self, api, make_volume):
        vol = make_volume()
        volume = api.claim(vol.spec)
        path = api.plugins.hook.snaptree_volume_path(backend=volume.backend, volume=volume)
        assert isinstance(path, str) and path.startswith("/"), \
            "snaptree_volume_path gives the absolute file or device a VM opens"

    def test_claim_is_the_plugins_own(self, api, make_volume):
        vol = make_volume()
        backend, locator = vol.spec.split(":", 1)
        answers = api.plugins.hook.snaptree_claim_volume(backend=backend, locator=locator)
        for volume in answers:
            if volume is not None:
                assert volume.backend == backend, (
                    f"{vol.spec} was claimed as a volume of backend {volume.backend!r}: a plugin "
                    f"claims only its own backend's specs, as Volume({backend!r}, ...)")
        self._claim(api, vol)  # and what snaptree makes of the answers

    def test_create_list_revert_delete(self, api, make_volume):
        vol = make_volume()
        group = self._group(api, [vol])
        vol.fill(1)
        first = vol.digest()
        self._assert_members(api, api.create(group, "one", description="first"), [vol])
        vol.fill(2)
        second = vol.digest()
        assert second != first, "fill(seed) must change the content"
        self._assert_members(api, api.create(group, "two"), [vol])
        assert [s.name for s in api.list(group)] == ["one", "two"]
        assert api.parent(group, "two").name == "one"
        assert len(self._stored(api, vol)) == 2
        ids = self._ids(api, vol)
        held = {"one": first, "two": second}
        # the older snapshot where the backend reverts to any, else the newest only;
        # each twice: a revert leaves its snapshot in place
        targets = ["one", "one", "two", "one"] if self._caps(api, vol).revert_to_any \
            else ["two", "two"]
        for seed, target in enumerate(targets, 3):
            vol.fill(seed)
            api.revert(group, target)
            self._assert_holds([vol], [held[target]], f"snapshot {target!r} after a revert to it")
            assert api.current(group).name == target
            assert self._ids(api, vol) == ids, (
                f"after a revert to {target!r} the backend lists {self._ids(api, vol)}, "
                f"not {ids}: a revert must leave every snapshot in place")
            self._assert_clean(api, group, f"a revert to {target!r}")
        now = vol.digest()
        api.delete(group, "one")
        assert [s.name for s in api.list(group)] == ["two"]
        assert api.info(group, "two").parent is None
        assert len(self._stored(api, vol)) == 1
        self._assert_clean(api, group, "a delete")
        api.delete(group, "two")
        assert self._stored(api, vol) == []
        self._assert_clean(api, group, "deleting every snapshot")
        assert vol.digest() == now, "deleting snapshots must not touch the volume"

    def test_group_of_two_volumes(self, api, make_volume):
        vols = [make_volume(), make_volume()]
        group = self._group(api, vols)
        held: dict[str, list[str]] = {}
        for seed, name in ((50, "g1"), (52, "g2")):
            for index, vol in enumerate(vols):
                vol.fill(seed + index)
            held[name] = [v.digest() for v in vols]
            self._assert_members(api, api.create(group, name), vols)
        ids = sorted(s.snapshot_id for s in api.list(group))
        for index, vol in enumerate(vols, 1):
            assert self._ids(api, vol) == ids, \
                f"volume {index} of 2 ({vol.spec}) holds {self._ids(api, vol)}, not {ids}"
        targets = ["g1", "g1", "g2", "g1"] if self._caps(api, vols[0]).revert_to_any \
            else ["g2", "g2"]
        for seed, target in enumerate(targets, 60):
            for index, vol in enumerate(vols):
                vol.fill(2 * seed + index)
            api.revert(group, target)
            self._assert_holds(vols, held[target], f"snapshot {target!r} after a revert of the "
                               "group to it (a revert reverts every member it is given)")
            for index, vol in enumerate(vols, 1):
                assert self._ids(api, vol) == ids, (
                    f"after a revert to {target!r} volume {index} of 2 ({vol.spec}) holds "
                    f"{self._ids(api, vol)}, not {ids}: a revert must leave every snapshot in place")
            self._assert_clean(api, group, f"a revert of two volumes to {target!r}")
        now = [v.digest() for v in vols]
        api.delete(group, "g1")
        for index, vol in enumerate(vols, 1):
            assert self._ids(api, vol) == [api.info(group, "g2").snapshot_id], \
                f"volume {index} of 2 ({vol.spec}) after deleting 'g1': {self._ids(api, vol)}"
        self._assert_clean(api, group, "deleting a snapshot of two volumes")
        api.delete(group, "g2")
        assert [self._stored(api, v) for v in vols] == [[], []]
        self._assert_clean(api, group, "deleting every snapshot of two volumes")
        self._assert_holds(vols, now, "its content (deleting snapshots must not touch it)")

    def test_member_describes_storage(self, api, make_volume):
        vol = make_volume()
        group = self._group(api, [vol])
        vol.fill(5)
        snap = api.create(group, "m")
        (member,) = snap.members
        assert member.snapshot_id == snap.snapshot_id
        stored = self._stored(api, vol)
        assert [m.snapshot_id for m in stored] == [snap.snapshot_id]
        assert stored[0].ref == member.ref

    # -- names and errors ---------------------------------------------------------

    @pytest.mark.parametrize("bad", INVALID_NAMES, ids=lambda n: repr(n)[:20])
    def test_invalid_names_refused(self, api, make_volume, bad):
        vol = make_volume()
        group = self._group(api, [vol])
        with pytest.raises(InvalidInput):
            api.create(group, bad)
        assert api.list(group) == []
        assert self._stored(api, vol) == []

    def test_duplicate_name_refused(self, api, make_volume):
        vol = make_volume()
        group = self._group(api, [vol])
        vol.fill(1)
        api.create(group, "same")
        with pytest.raises(Conflict):
            api.create(group, "same")
        assert len(self._stored(api, vol)) == 1

    def test_unknown_snapshot(self, api, make_volume):
        vol = make_volume()
        group = self._group(api, [vol])
        for call in (lambda: api.revert(group, "nope"), lambda: api.delete(group, "nope"),
                     lambda: api.info(group, "nope")):
            with pytest.raises(SnapshotNotFound):
                call()

    def test_volume_in_two_groups_refused(self, api, make_volume):
        vol = make_volume()
        self._group(api, [vol], "first")
        with pytest.raises(Conflict):
            self._group(api, [vol], "second")

    def test_footprint_holds_the_volume_and_its_snapshots(self, api, make_volume):
        vol = make_volume()
        volume = api.claim(vol.spec)
        footprint = api.plugins.hook.snaptree_volume_footprint(backend=volume.backend,
                                                              volume=volume)
        if footprint is None:
            pytest.skip("the backend gives no snaptree_volume_footprint (optional): "
                        "its volumes are compared by spec only")
        assert footprint and all(isinstance(p, str) and p.startswith("/") for p in footprint), \
            "snaptree_volume_footprint gives absolute paths, the volume's own first"
        group = self._group(api, [vol])
        for seed in (40, 41):
            vol.fill(seed)
            api.create(group, f"f{seed}")
        vm_path = api.plugins.hook.snaptree_volume_path(backend=volume.backend, volume=volume)
        # storage named by a path (a file, a folder, a device) must lie in the footprint
        held = [vm_path] + [m.ref for m in self._stored(api, vol)
                            if m.ref.startswith("/") and os.path.lexists(m.ref)]
        places = Places()
        for path in held:
            assert places.overlap([path], footprint), \
                f"{path} lies outside the footprint {footprint}"

    def test_missing_volume_refused(self, api, make_volume):
        vol = make_volume()
        backend, locator = vol.spec.split(":", 1)
        with pytest.raises((NotFound, InvalidInput)):
            api.create_group("ghost", [f"{backend}:{locator}-does-not-exist"])
        assert api.list_groups() == []

    # -- crashes and power cuts (more failures: FaultContract) -----------------------

    def test_crash_during_create_is_recovered(self, api, make_volume, snaptree_state_dir):
        vol = make_volume()
        group = self._group(api, [vol])
        vol.fill(30)
        before = vol.digest()
        crashed = run_cli(["create", group, "crashy"], snaptree_state_dir,
                          env={"SNAPTREE_KILL_AT_LABEL": "catalog:create-commit:before"})
        assert crashed.returncode == -9, crashed.stderr
        assert len(self._stored(api, vol)) == 1, "the crash left a member behind"
        report = api.recover()
        assert report.errors == []
        assert self._stored(api, vol) == []
        assert api.list(group) == []
        assert vol.digest() == before
        api.create(group, "crashy")
        assert len(self._stored(api, vol)) == 1

    def test_create_a_power_cut_lost_is_removed_after_reboot(self, api, make_volume,
                                                            snaptree_state_dir, monkeypatch):
        vol = make_volume()
        group = self._group(api, [vol])
        vol.fill(32)
        before = vol.digest()
        kept = api.create(group, "kept")
        crashed = run_cli(["create", group, "lost"], snaptree_state_dir,
                          env={"SNAPTREE_KILL_AT_LABEL": "catalog:create-commit:before"})
        assert crashed.returncode == -9, crashed.stderr
        forget_unsynced_creates(api, group)  # what the disk holds after the power cut
        assert len(self._stored(api, vol)) == 2, "the member of 'lost' is on storage"
        monkeypatch.setenv("SNAPTREE_BOOT_ID", "the-next-boot")
        report = api.recover()
        assert report.errors == []
        assert any("lost with a reboot" in line for line in report.actions), report.actions
        assert [m.snapshot_id for m in self._stored(api, vol)] == [kept.snapshot_id]
        assert api.check(group).clean
        vol.fill(33)
        api.revert(group, "kept")
        assert vol.digest() == before
