"""What snaptree does when a plugin breaks its contract: it checks what the
plugin returns, wraps what it raises, keeps the catalog right and undoes what
was made.  Real raw images and catalog; the misbehaving plugins here are fakes
on purpose (a file-copy backend told how to go wrong)."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from snaptree import (BackendInfo, Capabilities, MemberSnapshot, Snaptree, Volume,
                      VolumeBackend, hookimpl)
from snaptree.errors import BackendError, NotSupported, PluginError, StateError


class Shaky(VolumeBackend):
    """Snapshots a file by copying it to ``.NAME.shaky/<id>``; ``bug`` and
    ``fail`` make it go wrong on purpose."""

    info = BackendInfo("shaky", "a file copy that goes wrong when told", Capabilities())

    def __init__(self):
        self.bug = ""
        self.fail: dict[str, BaseException] = {}
        self.stale_id = ""  # for bug 'stale-id'

    def _maybe(self, op):
        if op in self.fail:
            raise self.fail[op]

    @staticmethod
    def folder(locator):
        head, tail = os.path.split(locator)
        return os.path.join(head, f".{tail}.shaky")

    def claim(self, locator):
        self._maybe("claim")
        if self.bug == "claim-raw":
            return Volume("raw", locator)
        if self.bug == "claim-str":
            return locator
        return Volume("shaky", os.path.realpath(locator))

    def snapshot(self, volumes, ctx):
        self._maybe("snapshot")
        out = []
        for volume in volumes:
            os.makedirs(self.folder(volume.locator), exist_ok=True)
            ref = os.path.join(self.folder(volume.locator), ctx.snapshot_id)
            shutil.copyfile(volume.locator, ref)
            sid = {"stale-id": self.stale_id, "wrong-id": "deadbeefdeadbeef"}.get(
                self.bug, ctx.snapshot_id)
            locator = volume.locator + ".other" if self.bug == "wrong-locator" else volume.locator
            out.append(MemberSnapshot("shaky", locator, sid, ref))
        if self.bug == "no-return":
            return None
        if self.bug == "dict":
            return [{"ref": m.ref} for m in out]
        if self.bug == "twice":
            return out + out
        return out

    def revert(self, members, ctx):
        self._maybe("revert")
        for member in members:
            shutil.copyfile(member.ref, member.locator + ".new")
            os.replace(member.locator + ".new", member.locator)

    def delete(self, members, ctx):
        self._maybe("delete")
        for member in members:
            try:
                os.unlink(member.ref)
            except FileNotFoundError:
                pass

    def list(self, volume):
        self._maybe("list")
        if self.bug == "list-no-return":
            return None
        try:
            names = sorted(os.listdir(self.folder(volume.locator)))
        except FileNotFoundError:
            return []
        return [MemberSnapshot("shaky", volume.locator, n, os.path.join(self.folder(volume.locator), n))
                for n in names]


@pytest.fixture
def shaky():
    return Shaky()


@pytest.fixture
def images(tmp_path):
    """A raw image and a shaky one, 8 KiB of ``1`` each."""
    raw, other = tmp_path / "raw.img", tmp_path / "shaky.img"
    for path in (raw, other):
        path.write_bytes(b"1" * 8192)
    return raw, other


def _stored(path):
    """What snapshot storage the raw and shaky backends hold for image ``path``."""
    found = []
    for folder in (f".{path.name}.snaptree", f".{path.name}.shaky"):
        where = path.parent / folder
        found += sorted(os.listdir(where)) if where.is_dir() else []
    return found


def _open_entries(api, group):
    return [e for e in api.journal(group) if e["status"] == "open"]


# -- 1. members returned by snaptree_snapshot are checked ---------------------

@pytest.mark.parametrize("bug, says", [
    ("wrong-id", "carries snapshot id 'deadbeefdeadbeef', not this snapshot's"),
    ("wrong-locator", "names volume shaky:"),
    ("dict", "is not a MemberSnapshot"),
    ("twice", "two members for shaky:"),
    ("no-return", r"Shaky\.snapshot \(backend 'shaky'\) returned None, not a list \(a missing"),
])
def test_a_wrong_member_fails_the_create_and_leaves_nothing(tmp_path, images, shaky, bug, says):
    raw, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("g", [f"raw:{raw}", f"shaky:{other}"])
        api.create("g", "before")
        kept = {p: _stored(p) for p in images}
        shaky.bug = bug
        with pytest.raises(PluginError, match=says) as caught:
            api.create("g", "s1")
        assert caught.value.exit_code == 10
        assert "Shaky" in str(caught.value) and "\n" not in str(caught.value)
        assert [s.name for s in api.list("g")] == ["before"]
        assert {p: _stored(p) for p in images} == kept, "what the create made is removed"
        assert not _open_entries(api, "g")
        shaky.bug = ""
        assert api.check("g").clean
        api.create("g", "after")


def test_a_member_carrying_another_snapshots_id_never_replaces_its_member(tmp_path, images, shaky):
    raw, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("g", [f"shaky:{other}"])
        s1 = api.create("g", "s1")
        other.write_bytes(b"2" * 8192)
        shaky.bug, shaky.stale_id = "stale-id", s1.snapshot_id
        with pytest.raises(PluginError, match=f"carries snapshot id '{s1.snapshot_id}'"):
            api.create("g", "s2")
        shaky.bug = ""
        assert api.info("g", "s1").members == s1.members
        assert _stored(other) == [s1.snapshot_id]
        api.revert("g", "s1")
        assert other.read_bytes() == b"1" * 8192


def test_a_plugin_returning_nothing_from_the_hook_itself_is_named(tmp_path, images):
    raw, other = images

    class Bare:
        @hookimpl
        def snaptree_backends(self):
            return [BackendInfo("bare", "hooks by hand", Capabilities())]

        @hookimpl
        def snaptree_claim_volume(self, backend, locator):
            return Volume("bare", locator) if backend == "bare" else None

        @hookimpl
        def snaptree_prepare(self, backend, operation, volumes, ctx):
            return True if backend == "bare" else None

        @hookimpl
        def snaptree_snapshot(self, backend, volumes, ctx):
            return [] if backend == "bare" else None  # no member for its volume

    with Snaptree(str(tmp_path / "state"), plugins=[Bare()]) as api:
        api.create_group("g", [f"raw:{raw}", f"bare:{other}"])
        with pytest.raises(PluginError, match=r"plugin 'Bare' \(backend 'bare'\) returned a wrong "
                                              r"member from snaptree_snapshot: no member for bare:"):
            api.create("g", "s")
        assert _stored(raw) == [] and api.list("g") == []


def test_the_catalog_never_replaces_a_member(tmp_path, images):
    raw, _ = images
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("g", [f"raw:{raw}"])
        snap = api.create("g", "s")
        with pytest.raises(StateError, match="never replaced"):
            with api.catalog.write("test") as db:
                api.catalog.add_members([snap.members[0]], db)
        assert api.info("g", "s").members == snap.members


# -- 2. a claim is checked ----------------------------------------------------

@pytest.mark.parametrize("bug, says", [
    ("claim-raw", "answered with a volume of backend 'raw'"),
    ("claim-str", "answered '/.*, not a Volume"),
])
def test_a_claim_of_another_backend_or_not_a_volume_is_refused(tmp_path, images, shaky, bug, says):
    _, other = images
    shaky.bug = bug
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        with pytest.raises(PluginError, match=rf"plugin 'Shaky' \(backend 'shaky'\) claimed "
                                              rf"volume shaky:{other} wrongly: it {says}"):
            api.create_group("g", [f"shaky:{other}"])
        assert api.list_groups() == []


# -- 4. what a plugin raises outside the error tree is wrapped ----------------

def test_a_plugins_runtime_error_is_a_plugin_error_keeping_the_cause(tmp_path, images, shaky):
    raw, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("g", [f"raw:{raw}", f"shaky:{other}"])
        shaky.fail["snapshot"] = RuntimeError("bad state")
        with pytest.raises(PluginError, match=r"^plugin 'Shaky' \(backend 'shaky'\): "
                                              r"snaptree_snapshot raised RuntimeError: bad state") as caught:
            api.create("g", "s")
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert _stored(raw) == [] and not _open_entries(api, "g")


def test_a_plugins_os_error_is_a_backend_error(tmp_path, images, shaky):
    raw, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("g", [f"raw:{raw}", f"shaky:{other}"])
        api.create("g", "a")
        shaky.fail["revert"] = OSError(5, "Input/output error")
        with pytest.raises(BackendError, match=r"snaptree_revert raised OSError: \[Errno 5\]") as caught:
            api.revert("g", "a")
        assert caught.value.exit_code == 6 and isinstance(caught.value.__cause__, OSError)


def test_an_interrupt_from_a_plugin_is_not_wrapped(tmp_path, images, shaky):
    raw, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("g", [f"raw:{raw}", f"shaky:{other}"])
        shaky.fail["snapshot"] = KeyboardInterrupt()
        with pytest.raises(KeyboardInterrupt):
            api.create("g", "s")
        assert _stored(raw) == []


def test_one_plugins_list_failing_leaves_recover_and_check_working(tmp_path, images, shaky):
    raw, other = images
    alone = tmp_path / "alone.img"
    alone.write_bytes(b"z" * 4096)
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("a-mixed", [f"raw:{raw}", f"shaky:{other}"])
        api.create_group("z-raw", [f"raw:{alone}"])
        for group in ("a-mixed", "z-raw"):  # a create a crash cut short in each group
            api.create(group, "crashy")
            with api.catalog.write("test") as db:
                sid = api.info(group, "crashy").snapshot_id
                api.catalog.set_state(sid, api.info(group, "crashy").state.PENDING, db)
                api.catalog.journal_begin(group, "create", sid, {"name": "crashy"}, db)
        shaky.fail["list"] = OSError(5, "Input/output error")
        report = api.recover()
        assert report.errors == ["a-mixed: plugin 'Shaky' (backend 'shaky'): snaptree_list raised "
                                 "OSError: [Errno 5] Input/output error"]
        assert api.list("z-raw") == [] and _stored(alone) == []
        drift = api.check("a-mixed")
        assert drift.unreadable == [{"volume": f"shaky:{other}", "error": report.errors[0][9:]}]
        del shaky.fail["list"]
        assert not api.recover().errors
        assert api.list("a-mixed") == [] and api.check("a-mixed").clean


def test_a_list_that_returns_nothing_is_named_by_check(tmp_path, images, shaky):
    _, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("g", [f"shaky:{other}"])
        shaky.bug = "list-no-return"
        (finding,) = api.check("g").unreadable
        assert "Shaky.list (backend 'shaky') returned None" in finding["error"]


# -- 3. a revert that fails after some volumes went back stays open ------------

def test_a_revert_failing_on_a_later_backend_is_rolled_forward(tmp_path, images, shaky):
    raw, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("vm", [f"raw:{raw}", f"shaky:{other}"])
        api.create("vm", "a")
        for path in images:
            path.write_bytes(b"2" * 8192)
        api.create("vm", "b")
        shaky.fail["revert"] = BackendError("shaky: out of space")
        with pytest.raises(BackendError, match=r"already reverted: raw:.*'snaptree recover vm'"):
            api.revert("vm", "a")
        assert (raw.read_bytes()[:1], other.read_bytes()[:1]) == (b"1", b"2")  # half-reverted
        assert [e["operation"] for e in _open_entries(api, "vm")] == ["revert"]
        drift = api.check("vm")
        assert [d["operation"] for d in drift.interrupted] == ["revert"] and not drift.clean
        # while the backend still fails, nothing builds on the mixed point
        with pytest.raises(StateError, match="unfinished operation that recover could not finish"):
            api.create("vm", "mixed")
        with pytest.raises(StateError):
            api.revert("vm", "b")
        assert api.current("vm").name == "b"
        del shaky.fail["revert"]
        report = api.recover("vm")
        assert report.actions == ["vm: finished reverting to 'a'"] and not report.errors
        assert raw.read_bytes() == other.read_bytes() == b"1" * 8192
        assert api.current("vm").name == "a" and api.check("vm").clean


def test_a_revert_failing_before_any_volume_went_back_is_closed(tmp_path, images, shaky):
    raw, other = images
    with Snaptree(str(tmp_path / "state"), plugins=[shaky]) as api:
        api.create_group("vm", [f"shaky:{other}", f"raw:{raw}"])
        api.create("vm", "a")
        api.create("vm", "b")
        shaky.fail["revert"] = BackendError("shaky: in use")
        with pytest.raises(BackendError, match="^shaky: in use$"):
            api.revert("vm", "a")
        assert not _open_entries(api, "vm") and api.check("vm").clean
        assert api.current("vm").name == "b"


# -- 5. capabilities are enforced -----------------------------------------------

def test_a_backend_without_revert_to_any_reverts_only_to_the_newest(tmp_path, images):
    raw, other = images
    asked = []

    class NewestOnly(Shaky):
        info = BackendInfo("newest", "reverts to its newest snapshot only",
                           Capabilities(revert_to_any=False))

        def claim(self, locator):
            return Volume("newest", locator)

        def snapshot(self, volumes, ctx):
            return [MemberSnapshot("newest", v.locator, ctx.snapshot_id, ctx.snapshot_id)
                    for v in volumes]

        def revert(self, members, ctx):
            asked.append(ctx.snapshot_name)

    with Snaptree(str(tmp_path / "state"), plugins=[NewestOnly()]) as api:
        api.create_group("g", [f"raw:{raw}", f"newest:{other}"])
        api.create("g", "old")
        api.create("g", "new")
        with pytest.raises(NotSupported, match=r"backend 'newest' reverts only to the newest "
                                               r"snapshot of newest:.* \('new'\), not to 'old'") as caught:
            api.revert("g", "old")
        assert caught.value.exit_code == 7 and asked == []
        assert [e["operation"] for e in api.journal("g")] == ["create", "create"]
        api.revert("g", "new")
        assert asked == ["new"]


# -- 7. one Snaptree shared by threads -------------------------------------------

def test_threads_sharing_one_snaptree_take_turns(tmp_path, images):
    raw, _ = images
    errors: list[str] = []
    warned: dict[int, list[str]] = {}
    with Snaptree(str(tmp_path / "state")) as api:
        api.create_group("g", [f"raw:{raw}"])

        def work(index):
            try:
                for round_ in range(5):
                    api.create("g", f"t{index}-{round_}")
                warned[index] = api.warnings
            except Exception as err:  # any failure counts, a snaptree one or a raw one
                errors.append(f"{type(err).__name__}: {err}")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(api.list("g")) == 20 and api.check("g").clean
        assert warned == {i: [] for i in range(4)}
