"""The conformance kit's failure half: what a backend must survive.

:class:`FaultContract` is mixed into :class:`snaptree.testing.BackendContract`;
a plugin author uses that class and never this module.  Failures come from
snaptree's own fault-injection points, as a crash or a broken disk would
bring them, never from mocks:

- ``SNAPTREE_FAIL_AT`` / ``SNAPTREE_KILL_AT_LABEL`` /
  ``SNAPTREE_INTERRUPT_AT_LABEL`` (:mod:`snaptree.faults`) fail, SIGKILL or
  Ctrl-C the operation right after the backend's first call;
- ``SNAPTREE_FAIL_COMMAND=BACKEND:N`` (:mod:`snaptree.runner`) makes the
  backend's own N-th command fail, in a child process, so a ``snapshot``
  call fails partway through its own work.

Every test uses a group of two volumes, so a backend that handles only the
first volume of a call, or an atomic backend's undo of what it really made,
cannot pass unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from .errors import SnaptreeError
from .markers import hookimpl

__all__ = ["FaultContract"]


class _FailNthSnapshotCall:
    """The N-th ``snaptree_snapshot`` call raises before the backend runs."""

    def __init__(self, n: int):
        self.n = n
        self.calls = 0

    @hookimpl(wrapper=True)
    def snaptree_snapshot(self, backend, volumes, ctx):
        self.calls += 1
        if self.calls == self.n:
            raise SnaptreeError(f"injected failure on snapshot call {self.n}")
        return (yield)


class _LeftBehind:
    """Watches ``backend``'s snapshot calls: when one raises, records what it
    left on storage for the volumes it was given, before snaptree's own
    clean-up can hide it (the hookspec: "If you raise, leave nothing behind
    for the volumes of this call")."""

    def __init__(self, backend: str, hook):
        self.backend = backend
        self.hook = hook
        self.left: dict[str, list[str]] = {}

    @hookimpl(wrapper=True)
    def snaptree_snapshot(self, backend, volumes, ctx):
        try:
            return (yield)
        except Exception:
            if backend == self.backend:
                for volume in volumes:
                    listed = self.hook.snaptree_list(backend=backend, volume=volume) or ()
                    refs = [str(m.ref) for m in listed if m.snapshot_id == ctx.snapshot_id]
                    if refs:
                        self.left[volume.spec] = refs
            raise


def _watched_create(state_dir: str, group: str, name: str, backend: str) -> None:
    """Child side of :meth:`FaultContract._create_failing_command`: one create,
    its outcome and what a failed snapshot call left as JSON on stdout."""
    from . import Snaptree

    with Snaptree(state_dir) as api:
        watcher = _LeftBehind(backend, api.plugins.hook)
        api.plugins.register(watcher)
        try:
            api.create(group, name)
            error = None
        except Exception as err:  # reported to the parent, which judges it
            error = f"{type(err).__name__}: {err}"
    print(json.dumps({"error": error, "left": watcher.left}))


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update(extra)
    return env


class FaultContract:
    """Failures, crashes and interrupts in the middle of create, revert, delete."""

    #: How many of its own commands, one at a time, a backend's create is made
    #: to fail (``SNAPTREE_FAIL_COMMAND``); the walk ends earlier at the first
    #: create that runs through.  A backend with long command sequences (LVM)
    #: may lower it to keep the kit fast.
    command_faults = 12

    # -- helpers (the lifecycle half defines _group, _stored, _ids, ...) ---------

    def _two(self, api, make_volume, seed: int):
        """A group of two volumes with two snapshots, ``a`` and ``b``; the
        content each volume held for each, and the volumes changed since."""
        vols = [make_volume(), make_volume()]
        group = self._group(api, vols)
        held: dict[str, list[str]] = {}
        for offset, name in enumerate(("a", "b")):
            for index, vol in enumerate(vols):
                vol.fill(seed + 2 * offset + index)
            held[name] = [v.digest() for v in vols]
            api.create(group, name)
        for index, vol in enumerate(vols):
            vol.fill(seed + 4 + index)
        return vols, group, held

    def _filled_pair(self, api, make_volume, seed: int):
        """A group of two volumes filled from ``seed`` and ``seed + 1``, no
        snapshot yet; with the content each holds."""
        vols = [make_volume(), make_volume()]
        group = self._group(api, vols)
        for offset, vol in enumerate(vols):
            vol.fill(seed + offset)
        return vols, group, [v.digest() for v in vols]

    def _target(self, api, vols) -> str:
        """The snapshot to revert to: the older one where the backend reverts to
        any, else the newest (the only one it promises)."""
        return "a" if self._caps(api, vols[0]).revert_to_any else "b"

    # -- create ------------------------------------------------------------------

    def test_failed_member_is_undone(self, api, make_volume, snaptree_state_dir):
        vols, group, before = self._filled_pair(api, make_volume, 10)
        backend = vols[0].backend
        if not self._caps(api, vols[0]).atomic_batch:
            # the second volume's call fails: the first's member is undone by delete
            injector = _FailNthSnapshotCall(2)
            api.plugins.register(injector)
            try:
                with pytest.raises(SnaptreeError, match="injected"):
                    api.create(group, "broken")
            finally:
                api.plugins.unregister(injector)
            self._assert_nothing_made(api, group, vols, before, "a create whose second call failed")
        # Ctrl-C right after the backend's (first) call made and returned its
        # members: an atomic backend's really-made members are undone too
        cut = run_child(["create", group, "broken"], snaptree_state_dir,
                        {"SNAPTREE_INTERRUPT_AT_LABEL": f"backend:snapshot:{backend}:after"})
        assert cut.returncode == 130, cut.stderr
        self._assert_nothing_made(api, group, vols, before,
                                  "a create interrupted right after the backend made its members")
        api.create(group, "broken")  # the name is free again
        assert all(len(self._stored(api, v)) == 1 for v in vols)

    def test_failed_commit_is_undone(self, api, make_volume, monkeypatch):
        vols, group, before = self._filled_pair(api, make_volume, 20)
        monkeypatch.setenv("SNAPTREE_FAIL_AT", "catalog:create-commit:before")
        with pytest.raises(SnaptreeError, match="injected"):
            api.create(group, "late")
        monkeypatch.delenv("SNAPTREE_FAIL_AT")
        self._assert_nothing_made(api, group, vols, before, "a create whose commit failed")

    def test_failing_commands_leave_nothing_behind(self, api, make_volume, snaptree_state_dir):
        """The backend's own commands fail one at a time (its 1st, 2nd, ...)
        during a create of two volumes: each failed create leaves nothing.
        A backend that runs no command through ``snaptree.runner`` passes at
        once."""
        vols, group, before = self._filled_pair(api, make_volume, 70)
        backend = vols[0].backend
        for n in range(1, self.command_faults + 1):
            outcome = self._create_failing_command(snaptree_state_dir, group, backend, n)
            if outcome["error"] is None:
                break
            what = f"a create whose {_nth(n)} {backend} command failed ({outcome['error']})"
            assert not outcome["left"], (
                f"{what}: its snaptree_snapshot call raised and left {outcome['left']} on storage; "
                "a snapshot call that raises must remove what it made for its volumes")
            self._assert_nothing_made(api, group, vols, before, what)
        else:
            api.create(group, "walked")
        assert [len(self._stored(api, v)) for v in vols] == [1, 1]
        self._assert_clean(api, group, "a create after failed ones")

    def _create_failing_command(self, state_dir, group, backend, n) -> dict[str, Any]:
        code = ("import sys; from snaptree.testing_faults import _watched_create; "
                "_watched_create(*sys.argv[1:])")
        child = subprocess.run([sys.executable, "-c", code, state_dir, group, "walked", backend],
                               capture_output=True, text=True, timeout=300,
                               env=_child_env({"SNAPTREE_FAIL_COMMAND": f"{backend}:{n}"}))
        lines = child.stdout.strip().splitlines()
        assert child.returncode == 0 and lines, (
            f"the create whose {_nth(n)} {backend} command failed crashed:\n{child.stderr}")
        return json.loads(lines[-1])

    # -- revert --------------------------------------------------------------------

    def test_failed_revert_can_be_redone(self, api, make_volume, monkeypatch):
        vols, group, held = self._two(api, make_volume, 80)
        target = self._target(api, vols)
        backend = vols[0].backend
        monkeypatch.setenv("SNAPTREE_FAIL_AT", f"backend:revert:{backend}:after")
        with pytest.raises(SnaptreeError, match="injected"):
            api.revert(group, target)
        monkeypatch.delenv("SNAPTREE_FAIL_AT")
        report = api.recover(group)
        assert report.errors == [], report.errors
        self._assert_snapshots_kept(api, group, vols, "a revert that failed after the backend's call")
        api.revert(group, target)
        self._assert_holds(vols, held[target], f"snapshot {target!r} after reverting to it again "
                           "once a revert had failed (a revert must be redone exactly)")
        self._assert_clean(api, group, "a revert redone after a failure")

    def test_crash_during_revert_is_recovered(self, api, make_volume, snaptree_state_dir):
        vols, group, held = self._two(api, make_volume, 100)
        target = self._target(api, vols)
        crashed = run_child(["revert", group, target], snaptree_state_dir,
                            {"SNAPTREE_KILL_AT_LABEL": f"backend:revert:{vols[0].backend}:after"})
        assert crashed.returncode == -9, crashed.stderr
        report = api.recover()
        assert report.errors == [], report.errors
        self._assert_holds(vols, held[target], f"snapshot {target!r} once recover finished a "
                           "revert a SIGKILL cut short (recover reverts again)")
        assert api.current(group).name == target
        self._assert_clean(api, group, "recover finished a revert cut short")
        for index, vol in enumerate(vols):
            vol.fill(110 + index)
        api.revert(group, target)
        self._assert_holds(vols, held[target], f"snapshot {target!r} after one more revert to it")

    # -- delete --------------------------------------------------------------------

    def test_failed_delete_is_finished(self, api, make_volume, monkeypatch):
        vols, group, held = self._two(api, make_volume, 120)
        now = [v.digest() for v in vols]
        kept = {s.name: s.snapshot_id for s in api.list(group)}["b"]
        monkeypatch.setenv("SNAPTREE_FAIL_AT", f"backend:delete:{vols[0].backend}:after")
        with pytest.raises(SnaptreeError, match="injected"):
            api.delete(group, "a")
        monkeypatch.delenv("SNAPTREE_FAIL_AT")
        report = api.recover(group)  # deletes the members again: gone already is fine
        assert report.errors == [], (
            "recover could not finish a delete that failed after the backend's first call "
            f"(a member already gone must not be an error): {report.errors}")
        self._assert_deleted(api, group, vols, kept, now, "a failed delete finished by recover")

    def test_crash_during_delete_is_recovered(self, api, make_volume, snaptree_state_dir):
        vols, group, held = self._two(api, make_volume, 130)
        now = [v.digest() for v in vols]
        kept = {s.name: s.snapshot_id for s in api.list(group)}["b"]
        crashed = run_child(["delete", group, "a"], snaptree_state_dir,
                            {"SNAPTREE_KILL_AT_LABEL": f"backend:delete:{vols[0].backend}:after"})
        assert crashed.returncode == -9, crashed.stderr
        report = api.recover()
        assert report.errors == [], (
            "recover could not finish a delete a SIGKILL cut short after the backend's first "
            f"call (a member already gone must not be an error): {report.errors}")
        self._assert_deleted(api, group, vols, kept, now, "recover finished a delete cut short")
        for index, vol in enumerate(vols):
            vol.fill(140 + index)
        api.revert(group, "b")
        self._assert_holds(vols, held["b"], "snapshot 'b' after the other one's delete")

    # -- assertions shared by the tests above ----------------------------------------

    def _assert_nothing_made(self, api, group, vols, before, what) -> None:
        assert api.list(group) == [], f"{what}: the catalog still lists a snapshot"
        for index, vol in enumerate(vols, 1):
            assert self._stored(api, vol) == [], (
                f"{what}: volume {index} of {len(vols)} ({vol.spec}) keeps "
                f"{[m.ref for m in self._stored(api, vol)]} on storage")
        self._assert_holds(vols, before, "its content from before the failed create")
        self._assert_clean(api, group, what)

    def _assert_snapshots_kept(self, api, group, vols, what) -> None:
        ids = sorted(s.snapshot_id for s in api.list(group))
        for index, vol in enumerate(vols, 1):
            assert self._ids(api, vol) == ids, (
                f"{what}: volume {index} of {len(vols)} ({vol.spec}) holds snapshots "
                f"{self._ids(api, vol)}, the catalog {ids}: a revert must leave every snapshot "
                "in place")

    def _assert_deleted(self, api, group, vols, kept, now, what) -> None:
        assert [s.snapshot_id for s in api.list(group)] == [kept], \
            f"{what}: the catalog still lists {[s.name for s in api.list(group)]}"
        for index, vol in enumerate(vols, 1):
            assert self._ids(api, vol) == [kept], (
                f"{what}: volume {index} of {len(vols)} ({vol.spec}) holds {self._ids(api, vol)}, "
                f"only {kept} should be left")
        self._assert_holds(vols, now, "its content (a delete must not touch the volumes)")
        self._assert_clean(api, group, what)


def run_child(args: list[str], state_dir: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    from .testing import run_cli  # the one way the kit runs the CLI

    return run_cli(args, state_dir, env=env)


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
