"""``snaptree_operation_begin`` / ``_end`` around create, revert and delete,
on real raw images: when they run, what they see, and how failures travel."""

from __future__ import annotations

import pytest

from snaptree import Snaptree, hookimpl
from snaptree.errors import BackendError, SnaptreeError


class Recorder:
    """Notes every begin/end call with what the catalog held at that moment."""

    def __init__(self, api):
        self.api = api
        self.calls: list[tuple] = []
        self.fail_begin = self.fail_end = False

    def _journal(self, group):
        return [(e["operation"], e["status"]) for e in self.api.catalog.journal_open(group.name)]

    @hookimpl
    def snaptree_operation_begin(self, group, operation, ctx):
        self.calls.append(("begin", operation, ctx.snapshot_name, self._journal(group)))
        ctx.scratch["recorder.opened"] = True
        if self.fail_begin:
            raise BackendError("recorder: cannot open")

    @hookimpl
    def snaptree_operation_end(self, group, operation, ctx, error):
        snap = self.api.catalog.get_snapshot(group.name, ctx.snapshot_name)
        self.calls.append(("end", operation, ctx.snapshot_name, ctx.scratch.get("recorder.opened"),
                           None if snap is None else snap.state.value,
                           None if error is None else str(error)))
        if self.fail_end:
            raise BackendError("recorder: close failed")


@pytest.fixture
def setup(tmp_path, disks):
    with Snaptree(str(tmp_path / "state")) as api:
        recorder = Recorder(api)
        api.plugins.register(recorder)
        api.create_group("vm", [f"raw:{p}" for p in disks])
        yield api, recorder, disks


def test_begin_before_the_journal_end_before_the_commit(setup):
    api, recorder, _ = setup
    api.create("vm", "a")
    api.create("vm", "b")
    api.revert("vm", "a")
    api.delete("vm", "b")
    assert recorder.calls == [
        # begin: nothing journaled yet; end: the snapshot still pending, the
        # context the same one the backends saw
        ("begin", "snapshot", "a", []), ("end", "snapshot", "a", True, "pending", None),
        ("begin", "snapshot", "b", []), ("end", "snapshot", "b", True, "pending", None),
        ("begin", "revert", "a", []), ("end", "revert", "a", True, "complete", None),
        ("begin", "delete", "b", [("delete", "open")]),
        ("end", "delete", "b", True, "deleting", None),
    ]


def test_delete_of_a_subtree_calls_them_per_snapshot(setup):
    api, recorder, _ = setup
    for name in ("a", "b", "c"):
        api.create("vm", name)
    recorder.calls.clear()
    api.delete("vm", "a", children=True)
    assert [(c[0], c[2]) for c in recorder.calls] == [
        ("begin", "c"), ("end", "c"), ("begin", "b"), ("end", "b"), ("begin", "a"), ("end", "a")]


def test_end_gets_the_error_after_the_undo(setup, monkeypatch):
    api, recorder, disks = setup
    monkeypatch.setenv("SNAPTREE_FAIL_AT", "backend:snapshot:raw:after")
    with pytest.raises(SnaptreeError, match="injected failure"):
        api.create("vm", "a")
    begin, end = recorder.calls
    assert begin[:3] == ("begin", "snapshot", "a")
    assert end[:4] == ("end", "snapshot", "a", True)
    assert "injected failure" in end[5]
    assert api.list("vm") == [] and api.catalog.journal_open("vm") == []
    assert [p.read_bytes()[:1] for p in disks] == [b"A", b"B"]


def test_begin_that_raises_refuses_with_nothing_journaled(setup):
    api, recorder, _ = setup
    recorder.fail_begin = True
    with pytest.raises(BackendError, match="recorder: cannot open"):
        api.create("vm", "a")
    # end still closes what begin (of any plugin) opened
    assert [c[0] for c in recorder.calls] == ["begin", "end"]
    assert recorder.calls[1][5] == "recorder: cannot open"
    assert api.list("vm") == [] and api.journal("vm", 5) == []
    recorder.fail_begin = False
    assert api.create("vm", "b").name == "b"


def test_end_that_raises_becomes_a_warning(setup):
    api, recorder, _ = setup
    recorder.fail_end = True
    snap = api.create("vm", "a")
    assert snap.state.value == "complete"
    assert api.warnings == ["closing after snapshot: recorder: close failed"]
    assert api.info("vm", "a").state.value == "complete"


def test_create_returns_what_the_catalog_holds(setup):
    api, _, _ = setup
    api.create("vm", "a")
    made = api.create("vm", "b", description="second")
    assert made == api.info("vm", "b")
    assert made.parent == "a"
