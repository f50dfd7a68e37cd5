"""Crash safety on LVM: SIGKILL at every step boundary of create, revert and delete.

The same walk as ``tests/test_crash.py`` (see :mod:`crash_harness`), on a
thin LV and on a thick one (``SNAPTREE_CRASH_LVM_THICK=0`` skips the thick walk).  These need
device-mapper; on a kernel without it they skip and ``tests/test_lvm_guest.py``
runs them inside a virtme-ng guest, where every LVM command costs about a
second of emulated CPU.  Three things keep the
walks affordable there:

* the scene (a thin LV with snapshots ``a`` and ``b``) is built through the
  API once, saved as thin snapshots of its three LVs plus a copy of the
  state directory, and restored for each kill point by snapshotting the
  saved LVs back under the scene's names (the backend finds snapshots by
  name and tag, never by LVM's origin field, so a restored scene is the
  same to it as a built one);
* ``snaptree`` runs in a forked child (:func:`crash_harness.fork_cli`):
  SIGKILL ends it as it ends a fresh process, without ten seconds of
  imports each time;
* the three walks run at once, each in a child process on a VG of its own
  (LVM serialises commands on one VG), so the guest's two CPUs both work.

The totals go to ``crash_totals`` and, when ``$SNAPTREE_CRASH_TOTALS`` names
a file (the guest run sets it), are also written there as JSON for the host
side's summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import time
import traceback

import attrs
import pytest

from crash_harness import CrashScene, KillPointStats, fork_cli, walk_kill_points
from guest.lvm_env import DEVMAPPER_MARKS, LoopVG, digest_device, write_pattern
from snaptree.testing import VolumeHandle
from snaptree_lvm.lvmcmd import LvInfo
from snaptree_lvm.names import match_snapshot_lv
from snaptree_lvm.revert import SNAPSHOT_TAG

pytestmark = DEVMAPPER_MARKS + [pytest.mark.crash, pytest.mark.slow]

OPERATIONS = ["create", "revert", "delete"]
#: Small: the walk writes and hashes the whole volume a few times per kill point.
LV_MIB = 4
#: Seconds one walk may take before it counts as hung (it takes a few minutes under TCG).
WALK_TIMEOUT = 2400.0
#: Names of the LVs a revert leaves behind when it is cut short (recover removes them).
_LEFTOVER_KINDS = ("snaptree-new", "snaptree-old")


class SavedScene:
    """A crash scene on LV ``lv`` of ``loop_vg``, built once and restored per kill point."""

    kind = ""

    def __init__(self, loop_vg: LoopVG, lv: str, workdir: str):
        self.loop_vg = loop_vg
        self.cmds = loop_vg.cmds
        self.vg = loop_vg.vg
        self.lv = lv
        self.device = loop_vg.device(lv)
        self.state_dir = os.path.join(workdir, "saved-state")
        self.digests: dict[str, list[str]] = {}

    def handle(self) -> VolumeHandle:
        device = self.device
        return VolumeHandle(spec=f"lvm:{self.vg}/{self.lv}",
                            fill=lambda seed: write_pattern(device, seed),
                            digest=lambda: digest_device(device))

    def save(self) -> "SavedScene":
        """Build the scene through the API, then remember what :meth:`restore` needs."""
        self.loop_vg.create(self.lv, LV_MIB, thin=self.kind == "thin")
        self.digests = CrashScene.build(self.state_dir, lambda: [self.handle()]).digests
        self._keep(self._family())
        return self

    def _keep(self, family: dict[str, LvInfo]) -> None:
        raise NotImplementedError

    def _put_back(self, family: dict[str, LvInfo]) -> None:
        raise NotImplementedError

    def _family(self) -> dict[str, LvInfo]:
        """The scene's LVs now: the origin, its snapshots and any revert leftovers."""
        return {name: info for name, info in self.cmds.lv_map(self.vg).items()
                if name == self.lv or name.startswith(self.lv + ".")}

    def leftovers(self) -> list[str]:
        """LVs of an interrupted revert, revert tags and a read-only origin, still there."""
        family = self._family()
        names = [name for name in family
                 if any(match_snapshot_lv(self.lv, name, kind) for kind in _LEFTOVER_KINDS)]
        origin = family.get(self.lv)
        sealed = ["origin read-only"] if origin is not None and not origin.is_writable else []
        return names + [f"tag {tag}" for tag in (origin.tags if origin else ())] + sealed

    def restore(self, base: str) -> CrashScene:
        """Put the saved scene back under the scene's names, with a fresh state directory."""
        self._put_back(self._family())
        state_dir = os.path.join(base, "state")
        shutil.copytree(self.state_dir, state_dir)
        return CrashScene(state_dir, [self.handle()], {k: list(v) for k, v in self.digests.items()})

    def _remove(self, names) -> None:
        names = list(names)
        if names:
            self.cmds.lvm("lvremove", "-y", *(f"{self.vg}/{name}" for name in names))


class SavedThinScene(SavedScene):
    """Thin: each LV of the scene is kept as a thin snapshot and snapshotted back."""

    kind = "thin"

    def _keep(self, family: dict[str, LvInfo]) -> None:
        #: scene LV name -> the saved thin snapshot of it
        self.saved: dict[str, str] = {}
        for i, name in enumerate(sorted(family)):
            keep = f"{self.lv}-saved{i}"
            self.cmds.create_thin_snapshot(self.vg, name, keep)
            self.saved[name] = keep
        assert len(self.saved) == 3, self.saved  # the origin and two snapshots

    def _put_back(self, family: dict[str, LvInfo]) -> None:
        self._remove(family)
        for name, keep in self.saved.items():
            is_origin = name == self.lv
            self.cmds.create_thin_snapshot(self.vg, keep, name, skip_activation=not is_origin,
                                           tags=() if is_origin else (SNAPSHOT_TAG,))


class SavedThickScene(SavedScene):
    """Thick: the origin's content at ``a`` and ``b`` is kept; restoring writes it back and
    takes the two copy-on-write snapshots again, with the names and sizes they had."""

    kind = "thick"

    def _keep(self, family: dict[str, LvInfo]) -> None:
        #: (snapshot LV name, its size in bytes, the origin's content when it was taken)
        self.snapshots: list[tuple[str, int, bytes]] = []
        for name, info in family.items():
            if name == self.lv:
                continue
            with open(self.loop_vg.device(name), "rb", buffering=0) as f:
                content = f.read()
            order = [self.digests["a"][0], self.digests["b"][0]].index(
                hashlib.sha256(content).hexdigest())
            self.snapshots.append((order, name, info.size_bytes, content))
        self.snapshots = [entry[1:] for entry in sorted(self.snapshots)]
        assert len(self.snapshots) == 2, family

    def _put_back(self, family: dict[str, LvInfo]) -> None:
        self._remove(name for name in family if name != self.lv)
        origin = family.get(self.lv)
        if origin is None:
            raise AssertionError(f"the walk lost the origin {self.vg}/{self.lv}")
        for tag in origin.tags:  # reported by leftovers() already
            self.cmds.del_tag(self.vg, self.lv, tag)
        if not origin.is_writable:  # so is a read-only origin
            self.cmds.change(self.vg, self.lv, writable=True)
        if not origin.is_active:
            self.cmds.activate(self.vg, self.lv)
        for name, size, content in self.snapshots:
            fd = os.open(self.device, os.O_WRONLY)
            try:
                os.pwrite(fd, content, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.cmds.create_thick_snapshot(self.vg, self.lv, name, f"{size}b",
                                            tags=[SNAPSHOT_TAG])


def _report(stats: KillPointStats) -> None:
    """Add ``stats`` to the JSON file the host side reads, if the run asks for one."""
    path = os.environ.get("SNAPTREE_CRASH_TOTALS")
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as f:
            runs = json.load(f)
    except (OSError, ValueError):
        runs = []
    runs.append(attrs.asdict(stats))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(runs, f)


#: The thick walk doubles the guest's work; ``$SNAPTREE_CRASH_LVM_THICK=0`` leaves it out
#: (the host's guest test passes the variable on).
SCENES: dict[str, type[SavedScene]] = {"thin": SavedThinScene}
if os.environ.get("SNAPTREE_CRASH_LVM_THICK", "1") != "0":
    SCENES["thick"] = SavedThickScene


def _walk(kind: str, operation: str, workdir: str) -> KillPointStats:
    """The whole walk of ``operation`` on a VG of its own (set up and torn down here)."""
    loop_vg = LoopVG(workdir, f"sncrash{os.getpid()}").setup(pool_mib=64)
    try:
        started = time.monotonic()
        saved = SCENES[kind](loop_vg, "crash", workdir).save()

        def restore(base: str) -> CrashScene:
            # progress for a run that shows output (-s): a slow walk is told from a hung one
            print(f"crash walk lvm-{kind} {operation}: {os.path.basename(base)} at "
                  f"{time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
            return saved.restore(base)

        return walk_kill_points(
            f"lvm-{kind}", operation, workdir, lambda base: [], build_scene=restore,
            cli=fork_cli,
            extra_checks=lambda scene: [f"revert leftovers after recover: {names}"
                                        for names in [saved.leftovers()] if names])
    finally:
        loop_vg.teardown()


@attrs.define
class WalkProcess:
    """A walk running in a child process; :meth:`result` waits for its stats."""

    kind: str
    operation: str
    pid: int
    result_path: str
    stats: KillPointStats | None = None

    @classmethod
    def start(cls, kind: str, operation: str, workdir: str) -> "WalkProcess":
        result_path = os.path.join(workdir, "result.json")
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                result = {"stats": attrs.asdict(_walk(kind, operation, workdir))}
                code = 0
            except BaseException:
                result = {"error": traceback.format_exc()}
            finally:
                try:
                    with open(result_path, "w", encoding="utf-8") as f:
                        json.dump(result, f)
                finally:
                    os._exit(code)
        return cls(kind, operation, pid, result_path)

    def result(self, timeout: float = WALK_TIMEOUT) -> KillPointStats:
        if self.stats is not None:
            return self.stats
        deadline = time.monotonic() + timeout
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                pytest.fail(f"the {self.kind} {self.operation} walk did not finish within {timeout:.0f}s")
            time.sleep(1)
        try:
            with open(self.result_path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError) as err:
            pytest.fail(f"the {self.kind} {self.operation} walk left no result: {err}")
        if "error" in result:
            pytest.fail(f"the {self.kind} {self.operation} walk broke:\n{result['error']}")
        self.stats = KillPointStats(**result["stats"])
        return self.stats


@pytest.fixture(scope="module")
def walks(tmp_path_factory):
    """Every walk, started together: LVM commands on separate VGs overlap on the
    guest's two CPUs, where one after the other they would leave one idle."""
    walks = {(kind, op): WalkProcess.start(kind, op,
                                           str(tmp_path_factory.mktemp(f"crash-{kind}-{op}")))
             for kind in SCENES for op in OPERATIONS}
    try:
        yield walks
    finally:
        for walk in walks.values():  # reap them even when a test stopped early
            if walk.stats is None:
                try:
                    walk.result()
                except BaseException:
                    pass


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", list(SCENES))
def test_lvm_survives_every_kill_point(kind, operation, walks, crash_totals):
    stats = walks[kind, operation].result()
    crash_totals.append(stats)
    _report(stats)
    assert stats.tried >= 6
    assert stats.failures == [], "\n".join(stats.failures)
    assert stats.survived == stats.tried
