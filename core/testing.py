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
entry-point plugins, so the backend is found exactly as users find it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable

import attrs
import pytest

from . import Snaptree, hookimpl
from .errors import Conflict, InvalidInput, NotFound, SnaptreeError, SnapshotNotFound
from .footprints import Places

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


class _FailNthSnapshotCall:
    """Fault injection: the N-th ``snaptree_snapshot`` call raises before the backend runs."""

    def __init__(self, n: int):
        self.n = n
        self.calls = 0

    @hookimpl(wrapper=True)
    def snaptree_snapshot(self, backend, volumes, ctx):
        self.calls += 1
        if self.calls == self.n:
            raise SnaptreeError(f"injected failure on snapshot call {self.n}")
        return (yield)


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


class BackendContract:
    """Contract tests; subclass and provide a ``make_volume`` fixture."""

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

    def _stored(self, api: Snaptree, vol: VolumeHandle):
        volume = api.claim(vol.spec)
        listed = api.plugins.hook.snaptree_list(backend=volume.backend, volume=volume)
        return [m for m in (listed or []) if m.snapshot_id]

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

    def test_create_list_revert_delete(self, api, make_volume):
        vol = make_volume()
        group = self._group(api, [vol])
        vol.fill(1)
        first = vol.digest()
        api.create(group, "one", description="first")
        vol.fill(2)
        second = vol.digest()
        assert second != first, "fill(seed) must change the content"
        api.create(group, "two")
        assert [s.name for s in api.list(group)] == ["one", "two"]
        assert api.parent(group, "two").name == "one"
        assert len(self._stored(api, vol)) == 2
        vol.fill(3)
        api.revert(group, "one")
        assert vol.digest() == first
        assert api.current(group).name == "one"
        info = api.backend_info(vol.backend)
        if info.capabilities.revert_to_any:
            api.revert(group, "two")
            assert vol.digest() == second
            api.revert(group, "one")
            assert vol.digest() == first
        api.delete(group, "one")
        assert [s.name for s in api.list(group)] == ["two"]
        assert api.info(group, "two").parent is None
        assert len(self._stored(api, vol)) == 1
        assert api.check(group).clean
        api.delete(group, "two")
        assert self._stored(api, vol) == []
        assert vol.digest() == first, "deleting snapshots must not touch the volume"

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

    # -- failures undo everything -------------------------------------------------

    def test_failed_member_is_undone(self, api, make_volume):
        vols = [make_volume(), make_volume()]
        group = self._group(api, vols)
        for seed, vol in enumerate(vols):
            vol.fill(10 + seed)
        before = [v.digest() for v in vols]
        info = api.backend_info(vols[0].backend)
        injector = _FailNthSnapshotCall(1 if info.capabilities.atomic_batch else 2)
        api.plugins.register(injector)
        try:
            with pytest.raises(SnaptreeError, match="injected"):
                api.create(group, "broken")
        finally:
            api.plugins.unregister(injector)
        assert api.list(group) == []
        assert [self._stored(api, v) for v in vols] == [[], []]
        assert [v.digest() for v in vols] == before
        api.create(group, "broken")  # the name is free again
        assert all(len(self._stored(api, v)) == 1 for v in vols)

    def test_failed_commit_is_undone(self, api, make_volume, monkeypatch):
        vols = [make_volume(), make_volume()]
        group = self._group(api, vols)
        for seed, vol in enumerate(vols):
            vol.fill(20 + seed)
        before = [v.digest() for v in vols]
        monkeypatch.setenv("SNAPTREE_FAIL_AT", "catalog:create-commit:before")
        with pytest.raises(SnaptreeError, match="injected"):
            api.create(group, "late")
        monkeypatch.delenv("SNAPTREE_FAIL_AT")
        assert api.list(group) == []
        assert [self._stored(api, v) for v in vols] == [[], []]
        assert [v.digest() for v in vols] == before

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
